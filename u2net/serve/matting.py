"""Alpha matting in child processes that are killed at the request's deadline.

Closed-form matting (pymatting) costs far more than the model and grows faster than the pixel count
(a 1 MP image: minutes and gigabytes). A thread running it cannot be stopped when its request times
out; a process can. So the model runs in the worker thread as for any request, and the matting step
alone runs in a child process that is killed (SIGKILL, its memory freed at once) when the deadline
passes or the service shuts down. At most one child per worker thread exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..inference.options import RemovalOptions
from ..inference.remover import matte_here
from .errors import ApiError, reason

# Children come from a forkserver: a fresh single-threaded interpreter that imports this module once,
# so forking it is safe (forking the multi-threaded server is not) and a child starts in milliseconds.
# pymatting is not preloaded: with it the forkserver itself uses (numba's) OpenMP, and then every fork
# aborts ("fork() called from a process already using GNU OpenMP"); each child imports it (under a second).
_CONTEXT = multiprocessing.get_context("forkserver")


def _child(conn, fn: Callable, args: tuple) -> None:
    try:
        answer = ("ok", fn(*args))
    except BaseException as exc:  # reported to the parent, which raises it as an ApiError
        answer = ("error", reason(exc))
    conn.send(answer)
    conn.close()


class Matting:
    """Runs functions in child processes, each killed at its deadline; :meth:`matte` runs
    :func:`~u2net.inference.remover.matte_here` (a ``matte`` of ``BackgroundRemover.cutout``)."""

    def __init__(self) -> None:
        _CONTEXT.set_forkserver_preload([__name__])  # no effect if the forkserver runs already
        self._running: set = set()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def running(self) -> int:
        """Child processes alive now."""
        return len(self._running)

    def matte(
        self, rgb: np.ndarray, alpha: np.ndarray, options: RemovalOptions, deadline: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(matted alpha, foreground colours) of ``rgb`` from the mask ``alpha``, in a child."""
        trimap_settings = dataclasses.replace(options, bg_image=None)  # the child needs no background image
        return self.call(matte_here, (rgb, alpha, trimap_settings), deadline)

    def call(self, fn: Callable, args: tuple, deadline: float) -> Any:
        """``fn(*args)`` in a child process (``fn``, ``args`` and the result travel pickled); 504
        once ``deadline`` (``time.monotonic``) passes, with the child killed; 500 if it fails."""
        if self._closed:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "1"})
        receiver, sender = _CONTEXT.Pipe(duplex=False)
        process = _CONTEXT.Process(target=_child, args=(sender, fn, args), name="u2net-matting", daemon=True)
        try:
            process.start()
            sender.close()  # the child holds the only writer: its death reads as end of file
            with self._lock:
                self._running.add(process)
                closed = self._closed  # close() ran while it started: it missed this one
            if closed:
                raise ApiError(503, "the server is shutting down", headers={"Retry-After": "1"})
            if not receiver.poll(max(0.0, deadline - time.monotonic())):
                raise ApiError(504, "alpha matting did not finish before the request's deadline")
            try:
                status, value = receiver.recv()
            except EOFError:  # killed from outside (out of memory?) or by close()
                process.join(1.0)
                raise ApiError(500, f"alpha matting failed: its process ended (status {process.exitcode})") from None
        finally:
            self._end(process)
            sender.close()
            receiver.close()
        if status != "ok":
            raise ApiError(500, f"alpha matting failed ({value})")
        return value

    def _end(self, process) -> None:
        if process.pid is not None:
            process.kill()  # harmless once it has exited
            process.join()
            process.close()
        with self._lock:
            self._running.discard(process)

    def close(self) -> None:
        """Kill every child; later calls answer 503."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for process in running:
            with contextlib.suppress(ValueError):  # closed meanwhile by its own thread
                process.kill()
