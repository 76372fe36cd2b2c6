"""The background-removal service: a FastAPI app around one shared :class:`BackgroundRemover`.

Endpoints (OpenAPI docs at ``/docs``):

- ``POST /remove-background``: a multipart image (field ``file``) -> the PNG cut-out. Form fields:
  ``mask_only``, ``crop``, ``padding``, ``crop_threshold``, ``threshold``, ``bg_color``, ``alpha_matting``,
  ``post_process``, ``stretch``.
- ``POST /batch-remove-background``: up to ``max_batch`` images (field ``files``, same options) -> a
  zip of ``<stem>.png`` files plus ``errors.json``, the per-file error list (empty when all worked).
- ``POST /remove-background/path``: JSON ``{"sourceImagePath", "outputImagePath", "threshold"}``, paths
  relative to the storage root (for services sharing a volume); the output is written atomically.
- ``GET /health``, ``GET /model-info``, and the web page at ``/``.

Inference runs off the event loop in a bounded thread pool (``workers`` threads, at most
``max_queue`` more requests waiting: beyond that 503). Every error is JSON ``{"error": message,
"detail": data}`` with its status: 400 bad request or corrupt image, 413 upload too large or too many
pixels, 415 not an image, 422 invalid parameters, 503 busy, 504 request timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..fileio import atomic_write
from ..inference.remover import BackgroundRemover, RemovalOptions
from ..models.pretrained import DEFAULT_MODEL

log = logging.getLogger("u2net.serve")

STATIC_DIR = Path(__file__).parent / "static"
MB = 1 << 20
FORM_SLACK = 64 * 1024  # multipart boundaries, headers and the small form fields around the files
SMALL_BODY = 64 * 1024  # JSON requests and anything else
# Only these decoders ever see an upload (no EPS/PDF/... plugins reachable from the network).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
# Signatures of the allowed formats: a file starting with one that PIL cannot open is corrupt (400), not foreign (415).
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
PNG_COMPRESS_LEVEL = 3  # zlib level: level 6 (PIL's default) costs ~2× the time for ~5 % smaller files


@dataclass
class ServeSettings:
    """Limits and resources of the service.

    - ``storage_root``: the folder ``/remove-background/path`` reads from and writes to (``None``:
      that endpoint answers 501).
    - ``max_upload_mb``: largest file accepted, per image (413 beyond).
    - ``max_pixels``: largest width × height accepted, checked on the header before decoding (413).
    - ``max_batch``: most files in one batch request (400 beyond).
    - ``workers``: inference threads; ``max_queue``: requests allowed to wait for one (503 beyond).
    - ``request_timeout_s``: longest a request may wait for and run its inference (504 beyond).
    - ``cors_origins``: origins allowed to call the API from a browser (``["*"]`` for any).
    - ``device``: PyTorch device when :func:`create_app` loads the model from a path.
    - ``warmup``: run one tiny image through the model at start-up (first request not slower).
    """

    storage_root: str | os.PathLike | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_batch: int = 10
    workers: int = 2
    max_queue: int = 64
    request_timeout_s: float = 60.0
    cors_origins: list[str] = field(default_factory=list)
    device: str = "auto"
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "max_batch", "workers", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one sentence")
    detail: Any = Field(None, description="machine-readable details (limits, sizes, validation errors)")


class PathRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    source_image_path: str = Field(
        alias="sourceImagePath", min_length=1, max_length=4096, description="image to read, relative to the root"
    )
    output_image_path: str = Field(
        alias="outputImagePath", min_length=1, max_length=4096, description="PNG to write, relative to the root"
    )
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="binarise the mask at this probability")


def _error_response(status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None):
    return JSONResponse({"error": message, "detail": jsonable_encoder(detail)}, status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad request: corrupt image, invalid option, unsafe path, too many files",
        413: "file too large, or too many pixels",
        415: "not an image (or an unsupported format)",
        422: "invalid parameters",
        503: "too many requests waiting",
        504: "the request timed out",
    }.items()
}


# -- images ------------------------------------------------------------------------------------
def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Identify an image from its header and check its pixel count before anything is decoded."""
    if not data:
        raise ApiError(400, f"{name}: the file is empty", {"filename": name})
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({_one_line(exc)})", {"filename": name}) from None
    except UnidentifiedImageError:
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ApiError(400, f"{name}: corrupt image (unreadable header)", {"filename": name}) from None
        raise ApiError(
            415,
            f"{name}: not an image, or not a supported format (PNG, JPEG, WebP, BMP, TIFF, GIF)",
            {"filename": name},
        ) from None
    except Exception as exc:  # a damaged header
        raise ApiError(400, f"{name}: corrupt image ({_one_line(exc)})", {"filename": name}) from None
    width, height = img.size
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"{name}: too many pixels: {width}×{height} = {width * height:,}; the limit is {max_pixels:,}",
            {"filename": name, "width": width, "height": height, "max_pixels": max_pixels},
        )
    if width == 0 or height == 0:
        raise ApiError(400, f"{name}: corrupt image (zero size)", {"filename": name})
    return img


def decode_image(img: Image.Image, name: str) -> Image.Image:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({_one_line(exc)})", {"filename": name}) from None
    except Exception as exc:  # truncated or damaged data
        raise ApiError(400, f"{name}: corrupt or truncated image ({_one_line(exc)})", {"filename": name}) from None
    return img


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def safe_stem(filename: str | None, fallback: str = "image") -> str:
    """An ASCII file stem for a client-supplied name (any folders dropped)."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem[:100] or fallback


# -- paths -------------------------------------------------------------------------------------
def resolve_in_root(root: Path, relative: str, what: str, must_exist: bool) -> Path:
    """``relative`` resolved under ``root`` (already resolved), symlinks followed; 400 for an absolute
    path, a ``..`` component or anything leading outside the root, 404 for a missing ``must_exist``."""
    shown = {"field": what, "path": relative}
    if "\x00" in relative:
        raise ApiError(400, f"{what}: invalid path", shown)
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or relative.startswith("\\"):
        raise ApiError(400, f"{what}: absolute paths are not allowed; give a path relative to the storage root", shown)
    if PureWindowsPath(relative).drive:
        raise ApiError(400, f"{what}: drive paths are not allowed; give a path relative to the storage root", shown)
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if ".." in parts:
        raise ApiError(400, f"{what}: '..' is not allowed in paths", shown)
    try:
        resolved = root.joinpath(*parts).resolve(strict=must_exist)
    except FileNotFoundError:
        raise ApiError(404, f"{what}: no such file under the storage root", shown) from None
    except RuntimeError:  # Python < 3.13: a symlink loop
        raise ApiError(400, f"{what}: cannot resolve the path (symlink loop)", shown) from None
    except OSError as exc:  # loops (3.13+), permissions; the message names no server path
        raise ApiError(400, f"{what}: cannot resolve the path ({exc.strerror or type(exc).__name__})", shown) from None
    if not resolved.is_relative_to(root):
        raise ApiError(400, f"{what}: the path leads outside the storage root", shown)
    return resolved


# -- the service -------------------------------------------------------------------------------
class Service:
    """The shared model, its thread pool and what the endpoints report."""

    def __init__(self, remover: BackgroundRemover, settings: ServeSettings, model_file: Path | None) -> None:
        self.remover = remover
        self.settings = settings
        self.root = Path(settings.storage_root).expanduser().resolve() if settings.storage_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ValueError(f"storage root {settings.storage_root}: not a folder")
        self.model_file = model_file
        self.sha256 = _sha256(model_file) if model_file is not None else None
        self.started = time.monotonic()
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="u2net-serve")
        self._pending = 0
        self._lock = threading.Lock()

    # -- pool --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def _submit(self, count: int, fn, args_list) -> list[concurrent.futures.Future]:
        with self._lock:
            capacity = self.settings.workers + self.settings.max_queue
            if self._pending + count > capacity:
                raise ApiError(
                    503,
                    "the server is busy: too many requests waiting; retry shortly",
                    {"pending": self._pending, "capacity": capacity},
                    headers={"Retry-After": "1"},
                )
            self._pending += count
        futures = []
        try:
            for args in args_list:
                future = self.pool.submit(fn, *args)
                future.add_done_callback(self._finished)
                futures.append(future)
        except RuntimeError:  # the pool is shut down: the server is stopping
            with self._lock:
                self._pending -= count - len(futures)
            for future in futures:
                future.cancel()
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "1"}) from None
        return futures

    def _finished(self, _future) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn, *args):
        """``fn(*args)`` in the pool, within the request timeout (504 beyond)."""
        (future,) = self._submit(1, fn, [args])
        return await self._wait([future], single=True)

    async def run_many(self, fn, args_list) -> list:
        """``fn(*args)`` for each, in the pool, all within one request timeout; exceptions returned."""
        futures = self._submit(len(args_list), fn, args_list)
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
            for future in futures:  # queued work is dropped; running work finishes and is discarded
                future.cancel()
            raise ApiError(
                504,
                f"the request timed out after {self.settings.request_timeout_s:g} s",
                {"timeout_s": self.settings.request_timeout_s},
            ) from None

    # -- work (in the pool) ------------------------------------------------------------------
    def cutout(self, img: Image.Image, name: str, options: RemovalOptions) -> tuple[bytes, tuple[int, int]]:
        result = self.remover.remove(decode_image(img, name), options)
        return png_bytes(result), result.size

    def cutout_file(self, source: Path, output: Path, name: str, options: RemovalOptions, deadline: float) -> dict:
        """Read ``source``, write the cut-out to ``output`` atomically; nothing is written once the
        request has timed out (``deadline``, monotonic), since its client was told 504."""
        size = source.stat().st_size
        if size > self.settings.max_upload_bytes:
            raise ApiError(413, f"{name}: the file is too large: {_mb(size)}; the limit is {_mb_limit(self)}")
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ApiError(400, f"{name}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
        result = self.remover.remove(decode_image(open_image(data, name, self.settings.max_pixels), name), options)
        if time.monotonic() > deadline:
            raise ApiError(504, f"the request timed out after {self.settings.request_timeout_s:g} s")
        try:
            with atomic_write(output) as f:  # a temporary file beside the output, renamed over it
                result.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        except OSError as exc:
            reason = exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)
            raise ApiError(500, f"outputImagePath: cannot write the output ({reason})") from None
        return {"width": result.size[0], "height": result.size[1], "bytes": output.stat().st_size}

    def warm_up(self) -> None:
        started = time.perf_counter()
        self.remover.remove(Image.new("RGB", (64, 64), (128, 128, 128)))
        log.info("model warmed up in %.2f s", time.perf_counter() - started)

    # -- reports -----------------------------------------------------------------------------
    def model_info(self) -> dict:
        predictor = getattr(self.remover, "predictor", None)
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
            "size_mb": round(info.size_mb, 3) if getattr(info, "size_mb", None) is not None else None,
            "file": self.model_file.name if self.model_file is not None else None,
            "sha256": self.sha256,
        }


def _model_file(source: str | os.PathLike | None) -> Path | None:
    """The weights file behind a path or pretrained tag (for its hash), if there is one on disk."""
    if source is None or str(source) == "":
        return None
    path = Path(source).expanduser()
    if path.is_file():
        return path
    from ..models.pretrained import PRETRAINED, local_weights

    return local_weights(str(source)) if str(source) in PRETRAINED else None  # bundled or cached, never fetched


def _sha256(path: Path) -> str:
    from ..models.pretrained import sha256_of

    return sha256_of(path)


# -- options ---------------------------------------------------------------------------------
def form_options(
    mask_only: Annotated[bool, Form(description="return the alpha mask (grayscale PNG)")] = False,
    crop: Annotated[bool, Form(description="crop to the subject's bounding box")] = False,
    padding: Annotated[int, Form(ge=0, le=10_000, description="padding around the crop, px")] = 10,
    crop_threshold: Annotated[
        int, Form(ge=1, le=255, description="pixels with alpha >= this count as the subject when cropping")
    ] = 32,
    threshold: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="binarise the mask at this probability")
    ] = None,
    bg_color: Annotated[
        str | None, Form(max_length=64, description="background colour: #RRGGBB, #RRGGBBAA, r,g,b[,a], a name")
    ] = None,
    alpha_matting: Annotated[bool, Form(description="refine the edges with alpha matting (slow)")] = False,
    post_process: Annotated[bool, Form(description="morphological clean-up of the mask")] = False,
    stretch: Annotated[
        bool, Form(description="min-max normalise the model's map first, as the original U2-Net and rembg do")
    ] = True,
) -> RemovalOptions:
    if alpha_matting:
        try:
            import pymatting  # noqa: F401
        except ImportError:
            raise ApiError(400, "alpha matting is not available on this server (pymatting not installed)") from None
    try:
        return RemovalOptions(
            mask_only=mask_only,
            crop=crop,
            padding=padding,
            crop_threshold=crop_threshold,
            threshold=threshold,
            bg_color=bg_color or None,
            alpha_matting=alpha_matting,
            post_process=post_process,
            stretch=stretch,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), {"bg_color": bg_color}) from None


Options = Annotated[RemovalOptions, Depends(form_options)]


# -- the app -----------------------------------------------------------------------------------
def create_app(
    remover_or_model_path: BackgroundRemover | str | os.PathLike = DEFAULT_MODEL, settings: ServeSettings | None = None
) -> FastAPI:
    """The FastAPI app serving one model: a :class:`BackgroundRemover` (or anything with its
    ``remove``), or a checkpoint / ``.pth`` / ``.onnx`` path or pretrained tag, loaded here once
    (default: :data:`~u2net.models.pretrained.DEFAULT_MODEL`, shipped with the package). The model
    file's SHA-256 is computed here too."""
    settings = settings or ServeSettings()
    if isinstance(remover_or_model_path, (str, os.PathLike)):
        remover = BackgroundRemover.from_path(remover_or_model_path, device=settings.device)
        model_file = _model_file(remover_or_model_path)
    else:
        remover = remover_or_model_path
        info = getattr(getattr(remover, "predictor", None), "info", None)
        model_file = _model_file(getattr(info, "source", None))
    service = Service(remover, settings, model_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.warmup:
            await asyncio.get_running_loop().run_in_executor(service.pool, service.warm_up)
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="U²-Net background removal",
        version=_version(),
        description="Remove the background of images with a U²-Net model. Errors are JSON "
        '`{"error": message, "detail": data}`. The web page is at `/`.',
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc.status, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
        return _error_response(422, f"invalid request: {where}", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return _error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(500, "internal server error", {"type": type(exc).__name__})

    async def read_upload(upload: UploadFile) -> bytes:
        name = upload.filename or "upload"
        limit = settings.max_upload_bytes
        if upload.size is not None and upload.size > limit:
            raise _too_large(name, upload.size, service)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise _too_large(name, len(data), service)
        return data

    # -- endpoints ---------------------------------------------------------------------------
    @app.post(
        "/remove-background",
        summary="Remove the background of one image",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the PNG cut-out (or mask)"}, **ERROR_RESPONSES},
    )
    async def remove_background(
        file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, BMP, TIFF, GIF)")],
        options: Options,
    ) -> Response:
        started = time.perf_counter()
        name = file.filename or "upload"
        data = await read_upload(file)
        img = open_image(data, name, settings.max_pixels)  # header only: cheap, before queueing
        png, (width, height) = await service.run(service.cutout, img, name, options)
        stem = safe_stem(name)
        return Response(
            png,
            media_type="image/png",
            headers={
                "Content-Disposition": f'inline; filename="{stem}.png"',
                "X-Image-Size": f"{width}x{height}",
                "X-Processing-Ms": f"{1000 * (time.perf_counter() - started):.1f}",
            },
        )

    @app.post(
        "/batch-remove-background",
        summary=f"Remove the background of up to {settings.max_batch} images",
        response_class=Response,
        responses={
            200: {
                "content": {"application/zip": {}},
                "description": "a zip of <stem>.png files and errors.json: [{filename, status, error}] for the "
                "files that failed",
            },
            **ERROR_RESPONSES,
        },
    )
    async def batch_remove_background(
        files: Annotated[list[UploadFile], File(description="the images")],
        options: Options,
    ) -> Response:
        if len(files) > settings.max_batch:
            raise ApiError(
                400,
                f"too many files: {len(files)}; at most {settings.max_batch} per request",
                {"files": len(files), "max_batch": settings.max_batch},
            )
        errors: list[dict] = []
        jobs: list[tuple[int, str, Image.Image]] = []
        for index, upload in enumerate(files):
            name = upload.filename or f"file{index + 1}"
            try:
                jobs.append((index, name, open_image(await read_upload(upload), name, settings.max_pixels)))
            except ApiError as exc:
                errors.append({"index": index, "filename": name, "status": exc.status, "error": exc.message})
        results = await service.run_many(service.cutout, [(img, name, options) for _, name, img in jobs])
        outputs: list[tuple[str, bytes]] = []
        used: set[str] = set()
        for (index, name, _), result in zip(jobs, results):
            if isinstance(result, BaseException):
                status, message = (
                    (result.status, result.message) if isinstance(result, ApiError) else (500, _reason(result))
                )
                if not isinstance(result, ApiError):
                    log.error("batch: %s failed: %s", name, message)
                errors.append({"index": index, "filename": name, "status": status, "error": message})
                continue
            outputs.append((_unique(safe_stem(name, f"image{index + 1}"), used), result[0]))
        errors.sort(key=lambda e: e["index"])
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
            for arcname, png in outputs:
                archive.writestr(arcname, png)
            archive.writestr("errors.json", json.dumps(errors, indent=2, ensure_ascii=False))
        return Response(
            buffer.getvalue(),
            media_type="application/zip",
            headers={
                "Content-Disposition": 'attachment; filename="cutouts.zip"',
                "X-Files-Done": str(len(outputs)),
                "X-Files-Failed": str(len(errors)),
            },
        )

    @app.post(
        "/remove-background/path",
        summary="Remove the background of an image on the shared storage volume",
        responses={**ERROR_RESPONSES, 404: {"model": ErrorBody}, 501: {"model": ErrorBody}},
    )
    async def remove_background_path(body: PathRequest) -> dict:
        if service.root is None:
            raise ApiError(501, "the path endpoint is disabled: start the server with a storage root (--storage-root)")
        root = service.root
        source = resolve_in_root(root, body.source_image_path, "sourceImagePath", must_exist=True)
        output = resolve_in_root(root, body.output_image_path, "outputImagePath", must_exist=False)
        if not source.is_file():
            raise ApiError(400, "sourceImagePath: not a file", {"path": body.source_image_path})
        if output.suffix.lower() != ".png":
            raise ApiError(
                400, "outputImagePath: the output is a PNG file; name it '.png'", {"path": body.output_image_path}
            )
        if output == source:
            raise ApiError(400, "outputImagePath: the output would overwrite the source image")
        if output.is_dir():
            raise ApiError(400, "outputImagePath: is a folder", {"path": body.output_image_path})
        existing = output.parent
        while not existing.exists():  # missing folders are created, under the root
            existing = existing.parent
        if not existing.is_dir():
            raise ApiError(400, "outputImagePath: a parent of the output is a file", {"path": body.output_image_path})
        started = time.perf_counter()
        options = RemovalOptions(threshold=body.threshold)
        deadline = time.monotonic() + settings.request_timeout_s
        written = await service.run(service.cutout_file, source, output, body.source_image_path, options, deadline)
        return {
            "sourceImagePath": body.source_image_path,
            "outputImagePath": output.relative_to(root).as_posix(),
            **written,
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
        }

    @app.get("/health", summary="Liveness and readiness")
    async def health() -> dict:
        return {
            "status": "ok",
            "model_loaded": service.remover is not None,
            "uptime_s": round(time.monotonic() - service.started, 3),
            "workers": settings.workers,
            "pending": service.pending,
        }

    @app.get("/model-info", summary="The model being served")
    async def model_info() -> dict:
        return {
            **service.model_info(),
            "limits": {
                "max_upload_mb": settings.max_upload_mb,
                "max_pixels": settings.max_pixels,
                "max_batch": settings.max_batch,
                "request_timeout_s": settings.request_timeout_s,
            },
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(BodyLimitMiddleware, settings=settings)
    if settings.cors_origins:  # outermost, so that even a 413 from the body limit carries the headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Content-Disposition", "X-Image-Size", "X-Processing-Ms", "X-Files-Done", "X-Files-Failed"],
        )
    return app


class BodyLimitMiddleware:
    """413 for a request body larger than its endpoint accepts, from ``Content-Length`` when given,
    else while the body streams in (the rest is not read): one upload for ``/remove-background``,
    ``max_batch`` of them for the batch, 64 KiB for anything else."""

    def __init__(self, app, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, path: str) -> int:
        if path.endswith("/batch-remove-background"):
            return self.settings.max_upload_bytes * self.settings.max_batch + FORM_SLACK
        if path.endswith("/remove-background"):
            return self.settings.max_upload_bytes + FORM_SLACK
        return SMALL_BODY

    def reject(self, limit: int) -> JSONResponse:
        return _error_response(
            413,
            f"the request is too large: at most {_mb(limit)} for this endpoint "
            f"({self.settings.max_upload_mb:g} MB per image)",
            {"limit_bytes": limit, "max_upload_mb": self.settings.max_upload_mb},
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self.reject(limit)(scope, receive, send)
            return
        received = 0
        rejected = False
        started = False

        async def limited_receive():
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    rejected = True
                    if not started:
                        await self.reject(limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if rejected:  # the 413 went out already: the app's own answer is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not rejected:
                raise


# -- helpers -----------------------------------------------------------------------------------
def _too_large(name: str, size: int, service: Service) -> ApiError:
    limit = service.settings.max_upload_bytes
    return ApiError(
        413,
        f"{name}: the file is too large: {_mb(size)}; the limit is {_mb_limit(service)}",
        {"filename": name, "size_bytes": size, "limit_bytes": limit},
    )


def _mb(size: int) -> str:
    return f"{size / MB:.2f} MB" if size < 10 * MB else f"{size / MB:.0f} MB"


def _mb_limit(service: Service) -> str:
    return f"{service.settings.max_upload_mb:g} MB"


def _unique(stem: str, used: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def _reason(exc: BaseException) -> str:
    message = _one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["ApiError", "BodyLimitMiddleware", "ServeSettings", "create_app", "open_image", "resolve_in_root"]
