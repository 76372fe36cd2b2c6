"""The shared model behind the endpoints: its worker pool, the admission of requests to it (503 when
full), the deadline of each request (504) and the remover calls that run in the pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.io import ImageReadError
from ..inference.options import RemovalOptions
from ..inference.qa import assess_mask
from ..inference.remover import BackgroundRemover
from ..models.pretrained import local_weights, pretrained_tag, sha256_of
from . import storage
from .errors import ApiError, os_reason
from .images import decode_image, open_image
from .matting import Matting
from .outputs import Png, png_file, save_png
from .settings import ServeSettings

log = logging.getLogger("u2net.serve")


class Admission:
    """The pool slots one request holds: from its admission, before its body is read, one per upload's
    worth of body bytes (see :class:`~u2net.serve.middleware.AdmissionMiddleware`), and at least one per
    image once a batch's size is known; each passes to an inference job when it is queued (freed when the
    job ends, even after a timeout), and what is left is freed when the request ends."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.held = 0

    def need(self, count: int) -> None:
        """Hold at least ``count`` slots (503 if the pool has too few free)."""
        if count > self.held:
            self.service.reserve(count - self.held)
            self.held = count

    def close(self) -> None:
        self.service.release(self.held)
        self.held = 0


def model_key(model: str | os.PathLike) -> str:
    """What a request names a model by: a pretrained tag as it is, a file by its stem."""
    return pretrained_tag(model) or Path(model).stem


class Service:
    """The shared model, its thread pool, the matting processes and what the endpoints report.

    ``choices``: further models a request may pick by name (the ``model`` field), each a remover and its
    file; the default is ``remover``, named ``default_name``."""

    def __init__(
        self,
        remover: BackgroundRemover,
        settings: ServeSettings,
        model_file: Path | None,
        choices: Mapping[str, tuple[BackgroundRemover, Path | None]] | None = None,
        default_name: str = "default",
    ) -> None:
        self.remover = remover
        self.default_name = default_name
        self.choices = {default_name: (remover, model_file), **(choices or {})}
        self.settings = settings
        self.root = Path(settings.storage_root).expanduser().resolve() if settings.storage_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ValueError(f"storage root {settings.storage_root}: not a folder")
        if self.root is not None and not storage.supported():
            raise ValueError("a storage root needs a platform that opens files without following links (POSIX)")
        self.model_file = model_file
        self.sha256 = sha256_of(model_file) if model_file is not None else None
        self.started = time.monotonic()
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="u2net-serve")
        self.matting = Matting()
        self._pending = 0
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        remover_or_model_path: BackgroundRemover | str | os.PathLike,
        settings: ServeSettings,
        choices: Sequence[str | os.PathLike] = (),
        name: str | None = None,
    ) -> Service:
        """The service of a remover, or of a checkpoint / ``.pth`` / ``.onnx`` path or pretrained tag loaded
        here, with the ``choices`` (paths or tags) loaded beside it; the SHA-256 of the model's file (when
        there is one on disk) is computed here too. ``name``: what requests call the default model (its tag or
        file stem unless given)."""
        if isinstance(remover_or_model_path, (str, os.PathLike)):
            remover = BackgroundRemover.from_path(
                remover_or_model_path, device=settings.device, precision=settings.precision
            )
            source, name = remover_or_model_path, name or model_key(remover_or_model_path)
        else:
            remover = remover_or_model_path
            source = getattr(getattr(getattr(remover, "predictor", None), "info", None), "source", None)
            name = name or (model_key(source) if source else "default")
        loaded = {}
        for choice in choices:
            if model_key(choice) != name:
                chosen = BackgroundRemover.from_path(choice, device=settings.device, precision=settings.precision)
                loaded[model_key(choice)] = (chosen, _model_file(choice, chosen))
        return cls(remover, settings, _model_file(source, remover), loaded, name)

    def remover_for(self, model: str | None) -> BackgroundRemover:
        """The remover a request names (``None``: the default); an unknown name is a 400."""
        if model is None or model == "":
            return self.remover
        if model not in self.choices:
            raise ApiError(
                400, f"unknown model {model!r}; this server offers {', '.join(self.choices)}", {"model": model}
            )
        return self.choices[model][0]

    # -- pool --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Pool slots taken: admitted requests and their images, waiting or running."""
        return self._pending

    def admit(self, count: int = 1) -> Admission:
        """A request's admission, holding ``count`` slots (503 if the pool has too few free)."""
        admission = Admission(self)
        admission.need(count)
        return admission

    def reserve(self, count: int) -> None:
        with self._lock:
            capacity = self.settings.capacity
            if self._pending + count > capacity:
                raise ApiError(
                    503,
                    "the server is busy: too many requests waiting; retry shortly",
                    {"pending": self._pending, "capacity": capacity},
                    headers={"Retry-After": "1"},
                )
            self._pending += count

    def release(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    def _submit(self, fn, args_list, admission: Admission) -> list[concurrent.futures.Future]:
        admission.need(len(args_list))
        futures: list[concurrent.futures.Future] = []
        try:
            for args in args_list:
                future = self.pool.submit(fn, *args)
                admission.held -= 1  # the job's now: freed when it is done
                future.add_done_callback(self._finished)
                futures.append(future)
        except RuntimeError:  # the pool is shut down
            for future in futures:
                future.cancel()
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "1"}) from None
        return futures

    def _finished(self, _future) -> None:
        self.release(1)

    async def run(self, admission: Admission, fn, *args):
        """``fn(*args)`` in the pool on a slot of ``admission``, within the request timeout (504 beyond)."""
        (future,) = self._submit(fn, [args], admission)
        return await self._wait([future], single=True)

    async def run_many(self, admission: Admission, fn, args_list) -> list:
        """``fn(*args)`` for each, in the pool, all within one request timeout; exceptions returned."""
        futures = self._submit(fn, args_list, admission)
        return await self._wait(futures, single=False)

    async def _wait(self, futures, single: bool):
        wrapped = [asyncio.wrap_future(f) for f in futures]
        try:
            if single:
                return await asyncio.wait_for(wrapped[0], self.settings.request_timeout_s)
            return await asyncio.wait_for(
                asyncio.gather(*wrapped, return_exceptions=True), self.settings.request_timeout_s
            )
        except asyncio.TimeoutError:
            # Queued work is dropped; running work ends at its deadline (matting) or finishes, discarded.
            for future in futures:
                future.cancel()
            raise ApiError(
                504,
                f"the request timed out after {self.settings.request_timeout_s:g} s",
                {"timeout_s": self.settings.request_timeout_s},
            ) from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.matting.close()

    # -- work (in the pool) ------------------------------------------------------------------
    def deadline(self) -> float:
        """When a request starting now times out (``time.monotonic``)."""
        return time.monotonic() + self.settings.request_timeout_s

    def remove(
        self, image: Image.Image, options: RemovalOptions, deadline: float, model: str | None, name: str
    ) -> tuple[Image.Image, np.ndarray]:
        """The cut-out and its alpha mask (see ``BackgroundRemover.cutout``), by the ``model`` chosen; pixels
        the remover refuses (NaN in a float image, say) are a 400 naming the file ``name``."""
        remover = self.remover_for(model)
        try:
            matte = lambda rgb, alpha, settings: self.matting.matte(rgb, alpha, settings, deadline)  # noqa: E731
            return remover.cutout(image, options, matte)
        except ImageReadError as exc:
            raise ApiError(400, f"{name}: unusable image ({exc.reason})", {"filename": name}) from None

    def cutout(
        self, img: Image.Image, name: str, options: RemovalOptions, deadline: float, model: str | None = None
    ) -> Png:
        result, alpha = self.remove(decode_image(img, name), options, deadline, model, name)
        return png_file(result, self.settings.max_output_bytes, name)._replace(quality=assess_mask(alpha))

    def cutout_file(
        self,
        source: tuple[str, ...],
        output: tuple[str, ...],
        name: str,
        options: RemovalOptions,
        deadline: float,
        model: str | None = None,
    ) -> dict:
        """Read ``source``, write the cut-out to ``output`` atomically, both under the root and opened
        here, with no link followed; nothing is written once the request has timed out (``deadline``),
        since its client was told 504."""
        data, source_id = storage.read_file(self.root, source, "sourceImagePath", self.settings.max_upload_bytes)
        img = open_image(data, name, self.settings.max_pixels)
        with storage.OutputFile(self.root, output, "outputImagePath", source_id) as out:  # checked, held
            result, _ = self.remove(decode_image(img, name), options, deadline, model, name)
            if time.monotonic() > deadline:
                raise ApiError(504, f"the request timed out after {self.settings.request_timeout_s:g} s")
            try:
                nbytes = out.write(lambda f: save_png(result, f, self.settings.max_output_bytes, name))
            except OSError as exc:
                raise ApiError(500, f"outputImagePath: cannot write the output ({os_reason(exc)})") from None
        return {"width": result.size[0], "height": result.size[1], "bytes": nbytes}

    def warm_up(self) -> None:
        started = time.perf_counter()
        for remover, _ in self.choices.values():
            remover.remove(Image.new("RGB", (64, 64), (128, 128, 128)))
        log.info("%d model(s) warmed up in %.2f s", len(self.choices), time.perf_counter() - started)

    # -- reports -----------------------------------------------------------------------------
    def model_info(self) -> dict:
        """The default model's facts, its name (``model``) and the names a request may pick (``choices``)."""
        return {
            **_remover_info(self.remover, self.model_file, self.sha256),
            "model": self.default_name,
            "choices": list(self.choices),
        }


def _remover_info(remover: BackgroundRemover, model_file: Path | None, sha256: str | None) -> dict:
    """What /model-info says of one model."""
    predictor = getattr(remover, "predictor", None)
    info = getattr(predictor, "info", None)
    extra = dict(getattr(info, "extra", {}) or {})
    providers = extra.get("providers")
    device = extra.get("device")
    try:
        input_size = int(predictor.input_size)
    except (AttributeError, TypeError, ValueError, KeyError):
        input_size = None
    return {
        "name": getattr(info, "name", None) or type(predictor).__name__,
        "parameters": getattr(info, "parameters", None),
        "input_size": input_size,
        "backend": getattr(info, "backend", None),
        "execution_providers": list(providers) if providers else ([device] if device else []),
        "device": device,
        "precision": extra.get("precision"),
        "size_mb": round(info.size_mb, 3) if getattr(info, "size_mb", None) is not None else None,
        "file": model_file.name if model_file is not None else None,
        "sha256": sha256,
    }


def _model_file(source: str | os.PathLike | None, remover: BackgroundRemover | None = None) -> Path | None:
    """The weights file behind a path or pretrained tag (for its hash), if there is one on disk: the file the
    remover runs where it names one (a tag's int8 file, say), else the tag's or path's."""
    running = getattr(getattr(getattr(remover, "predictor", None), "info", None), "source", None)
    if running and Path(running).is_file():
        return Path(running)
    if source is None or str(source) == "":
        return None
    tag = pretrained_tag(source)  # the loaders' rule: a tag is the tag, even beside a file of its name
    if tag is not None:
        return local_weights(tag)  # bundled or cached, never fetched
    path = Path(source).expanduser()
    return path if path.is_file() else None


__all__ = ["Admission", "Service"]
