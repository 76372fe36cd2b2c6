"""A pipelined batch runner and the output formats of batch jobs.

    run_pipeline(items, prepare, predict, finish, on_result, batch_size=4, workers=2, cost=bytes_of)

Three stages overlap: ``prepare(item) -> (model_input, state)`` (decoding, preprocessing) runs in a thread
pool ahead of the model; ``predict(N×… array) -> N outputs`` runs on the calling thread on batches of up to
``batch_size`` stacked inputs; ``finish(item, state, output)`` (post-processing, encoding, writing) runs in
a second pool behind it. Threads suffice: NumPy, OpenCV, Pillow's codecs, PyTorch and ONNX Runtime release
the GIL. Both queues are bounded, so a huge folder never holds more than a few batches in memory.

With ``cost(item) -> int`` (an estimate of the most bytes the item holds on its way through, made on the
calling thread before it starts, so cheaply: from an image's header, say), the items in flight (started and
not yet reported) are also bounded in bytes: the next item starts only while the costs in flight, its own
included, stay within ``memory_budget`` (default :data:`DEFAULT_MEMORY_BUDGET`), or when nothing is in
flight, so that an item larger than the budget still runs, alone, as it would one after another. Items start
in input order: a large one waits for room, and those behind it wait with it.

Every item ends in exactly one ``on_result(item, error)`` call on the calling thread (``error`` is ``None``
on success), in no particular order. An exception in any stage fails that item only; a batch whose model
run fails is retried image by image, so that one bad input cannot fail its neighbours. Ctrl-C (or any
exception from ``predict`` or ``on_result`` that is not an ``Exception``) stops the run: work not yet
started is dropped, work under way is finished (an atomic write completes or leaves nothing), and the
exception propagates. An exception from ``cost`` fails that item, which is then never started.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

__all__ = [
    "CPU_BATCH_SIZE",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_WORKERS",
    "GPU_BATCH_SIZE",
    "OUTPUT_FORMATS",
    "OutputFormat",
    "default_batch_size",
    "format_of_suffix",
    "run_pipeline",
]

CPU_BATCH_SIZE = 4  # on a CPU a batch is no faster per image; a few keep the model busy while threads decode
GPU_BATCH_SIZE = 8  # a GPU runs a batch of 8 320² inputs in about the time of 2 single images
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)  # threads per side of the model (decode ahead, encode behind)
# Bytes of items in flight at once, where the items have a cost. A 24 MP photo takes about 0.45 GB on its own
# in remove_batch: 512 MiB runs such photos one at a time (about the memory of --workers 0: with 1 GiB two
# overlapped and the peak was 1.93 GB against 1.16 GB, benchmarks/folder_memory.py), lets two 12 MP ones and
# ordinary photos as many as the queues hold overlap: only folders of large images are held back.
DEFAULT_MEMORY_BUDGET = 512 << 20

Prepare = Callable[[Any], tuple[np.ndarray, Any]]
Predict = Callable[[np.ndarray], Sequence[Any]]
Finish = Callable[[Any, Any, Any], None]
OnResult = Callable[[Any, BaseException | None], None]
Cost = Callable[[Any], int]


def default_batch_size(predictor) -> int:
    """:data:`GPU_BATCH_SIZE` when ``predictor``'s backend runs on a GPU (a CUDA PyTorch device, or a CUDA
    or TensorRT ONNX Runtime provider first), else :data:`CPU_BATCH_SIZE`."""
    backend = getattr(predictor, "backend", None)
    device = getattr(backend, "device", None)
    providers = getattr(backend, "providers", None) or [""]
    on_gpu = getattr(device, "type", None) == "cuda" or providers[0].startswith(("CUDA", "Tensorrt", "ROCM"))
    return GPU_BATCH_SIZE if on_gpu else CPU_BATCH_SIZE


# -- output formats ----------------------------------------------------------------------------
# name -> (suffix of its files, Pillow's format name)
OUTPUT_FORMATS = {"png": (".png", "PNG"), "webp": (".webp", "WEBP"), "jpeg": (".jpg", "JPEG")}
_SUFFIXES = {".png": "png", ".webp": "webp", ".jpg": "jpeg", ".jpeg": "jpeg"}
DEFAULT_JPEG_QUALITY = 90
# zlib level of PNG outputs: PIL's default (6) takes 3× the time of level 3 for files ~5 % smaller
PNG_COMPRESS_LEVEL = 3


def format_of_suffix(suffix: str) -> str | None:
    """The output format a file suffix names (``.png``, ``.webp``, ``.jpg``, ``.jpeg``; any case), else ``None``."""
    return _SUFFIXES.get(suffix.lower())


@dataclass(frozen=True)
class OutputFormat:
    """How outputs are encoded: ``png`` (lossless), ``webp`` (lossless, or lossy at ``quality``) or ``jpeg``
    (lossy, at ``quality``, default :data:`DEFAULT_JPEG_QUALITY`; no alpha channel)."""

    name: str = "png"
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.name not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.name!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in [1, 100], got {self.quality}")
        if self.quality is not None and self.name == "png":
            raise ValueError("quality applies to webp and jpeg outputs; png is always lossless")

    @property
    def suffix(self) -> str:
        return OUTPUT_FORMATS[self.name][0]

    @property
    def has_alpha(self) -> bool:
        """Whether the format can hold a cut-out's transparency."""
        return self.name != "jpeg"

    def save(self, image, file: IO[bytes]) -> None:
        """Encode a PIL image into ``file``."""
        pillow_name = OUTPUT_FORMATS[self.name][1]
        if self.name == "png":
            image.save(file, format=pillow_name, compress_level=PNG_COMPRESS_LEVEL)
        elif self.name == "webp" and self.quality is None:
            # exact: keep the colours under transparent pixels too, so that "lossless" is bit for bit
            image.save(file, format=pillow_name, lossless=True, exact=True)
        elif self.name == "webp":
            image.save(file, format=pillow_name, quality=self.quality)
        else:
            if image.mode not in ("RGB", "L"):
                raise ValueError(f"JPEG holds RGB or grayscale images, not {image.mode}")
            image.save(file, format=pillow_name, quality=self.quality or DEFAULT_JPEG_QUALITY)


# -- the pipeline ------------------------------------------------------------------------------
class _Inline(Executor):
    """Runs each task at once on the calling thread: ``workers=0``, the plain sequential loop."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # a KeyboardInterrupt is not an item's failure: it propagates
            future.set_exception(exc)
        return future


class _Stopped(Exception):
    """A task that the run's stop dropped before it began."""


def _executor(workers: int, name: str) -> Executor:
    return ThreadPoolExecutor(workers, thread_name_prefix=f"u2net-{name}") if workers else _Inline()


def run_pipeline(
    items: Iterable,
    prepare: Prepare,
    predict: Predict,
    finish: Finish,
    on_result: OnResult,
    *,
    batch_size: int = 1,
    workers: int = 0,
    cost: Cost | None = None,
    memory_budget: int | None = None,
) -> None:
    """Run every item through ``prepare`` → ``predict`` (batched) → ``finish`` (see the module docstring).

    ``workers``: threads in each of the two pools (0: everything on the calling thread, one item after
    another). Inputs of different shapes are never stacked together: they go to the model in separate runs.
    ``cost``: each item's bytes, for ``memory_budget`` (default :data:`DEFAULT_MEMORY_BUDGET`; 0: one item
    at a time); without it the items are bounded in number only.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    if budget < 0:
        raise ValueError(f"memory_budget must be >= 0, got {budget}")
    stop = threading.Event()

    def unless_stopped(fn: Callable) -> Callable:
        def run(*args):
            if stop.is_set():
                raise _Stopped
            return fn(*args)

        return run

    with _executor(workers, "prepare") as ahead, _executor(workers, "finish") as behind:
        stages = (unless_stopped(prepare), predict, unless_stopped(finish), on_result)
        run = _Run(iter(items), *stages, ahead, behind, cost or _free, budget)
        try:
            run.loop(batch_size, ahead_limit=2 * batch_size + workers, behind_limit=batch_size + 2 * workers)
        except BaseException:
            stop.set()
            for pool in (ahead, behind):  # what has not started never will; the `with` waits for the rest
                pool.shutdown(wait=False, cancel_futures=True)
            raise


@dataclass(eq=False)
class _Job:
    """An item and its cost, from the moment it starts until it is reported."""

    item: Any
    cost: int


def _free(item: Any) -> int:
    return 0


class _Run:
    """The state of one :func:`run_pipeline` call: items prepared ahead (in order) and being finished, and
    the bytes they hold."""

    def __init__(
        self, items, prepare, predict, finish, on_result, ahead: Executor, behind: Executor, cost: Cost, budget: int
    ) -> None:
        self.items, self.prepare, self.predict, self.finish = items, prepare, predict, finish
        self.on_result, self.ahead, self.behind, self.cost, self.budget = on_result, ahead, behind, cost, budget
        self.prepared: deque[tuple[_Job, Future]] = deque()
        self.finishing: dict[Future, _Job] = {}
        self.in_flight = 0  # the costs of the jobs started and not yet reported
        self.waiting: _Job | None = None  # the next job, costed, that the budget has not let start yet
        self.exhausted = False

    def loop(self, batch_size: int, ahead_limit: int, behind_limit: int) -> None:
        self._top_up(ahead_limit)
        while self.prepared or self.waiting is not None:
            if self.prepared:
                # in methods of their own, so that no local of this loop keeps a finished item's data alive
                self._hand_over(self._take_batch(batch_size, ahead_limit))
                self._collect(behind_limit)
            else:  # the budget is held by items being finished: wait for one of them
                self._collect(len(self.finishing) - 1)
            self._top_up(ahead_limit)
        self._collect(0)

    def _take_batch(self, batch_size: int, ahead_limit: int) -> list[tuple[_Job, np.ndarray, Any]]:
        """Up to ``batch_size`` prepared (job, model input, state), in order; the failed ones reported."""
        batch = []
        while self.prepared and len(batch) < batch_size:
            job, future = self.prepared.popleft()
            self._top_up(ahead_limit)
            try:
                model_input, state = future.result()
            except Exception as exc:
                self._report(job, exc)
            else:
                batch.append((job, model_input, state))
        return batch

    def _hand_over(self, batch: list[tuple[_Job, np.ndarray, Any]]) -> None:
        """Run the model on ``batch`` and start finishing its items."""
        for job, state, output, error in self._predicted(batch):
            if error is not None:
                self._report(job, error)
            else:
                self.finishing[self.behind.submit(self.finish, job.item, state, output)] = job

    def _next_job(self) -> _Job | None:
        """The next item to start, costed (kept in :attr:`waiting` until it starts); ``None`` at the end.
        An item whose cost fails is reported with that error."""
        while self.waiting is None and not self.exhausted:
            item = next(self.items, _END)
            if item is _END:
                self.exhausted = True
                break
            try:
                self.waiting = _Job(item, self.cost(item))
            except Exception as exc:
                self.on_result(item, exc)
        return self.waiting

    def _top_up(self, limit: int) -> None:
        while len(self.prepared) < limit:
            job = self._next_job()
            if job is None:
                return
            if self.in_flight and self.in_flight + job.cost > self.budget:
                return  # no room yet; with nothing in flight a job starts however large, as it would alone
            self.waiting = None
            self.in_flight += job.cost
            self.prepared.append((job, self.ahead.submit(self.prepare, job.item)))

    def _report(self, job: _Job, error: BaseException | None) -> None:
        self.in_flight -= job.cost
        self.on_result(job.item, error)

    def _predicted(self, batch: list) -> list[tuple[_Job, Any, Any, BaseException | None]]:
        """(job, state, output, error) for each of ``batch``: one model run per input shape; a run that
        fails is repeated one input at a time, so only the inputs that fail alone fail."""
        groups: dict[tuple, list] = {}
        for entry in batch:
            groups.setdefault(entry[1].shape, []).append(entry)
        results = []
        for group in groups.values():
            try:
                outputs = self.predict(np.stack([model_input for _, model_input, _ in group]))
                if len(outputs) != len(group):
                    raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(group)} inputs")
            except Exception as exc:
                if len(group) > 1:
                    results += [r for entry in group for r in self._predicted([entry])]
                else:
                    results.append((group[0][0], group[0][2], None, exc))
                continue
            results += [(job, state, output, None) for (job, _, state), output in zip(group, outputs)]
        return results

    def _collect(self, limit: int) -> None:
        """Report finished items; wait while more than ``limit`` are being finished."""
        while self.finishing:
            done = [future for future in self.finishing if future.done()]
            if not done and len(self.finishing) <= limit:
                return
            if not done:
                done = list(wait(self.finishing, return_when=FIRST_COMPLETED).done)
            for future in done:
                self._report(self.finishing.pop(future), future.exception())


_END = object()
