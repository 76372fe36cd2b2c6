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
``max_queue`` more images waiting: beyond that 503, answered before an upload is read); alpha
matting runs in a child process killed at the request's deadline. Outputs are spooled (memory, then
a temporary file) and streamed. Every error is JSON ``{"error": message, "detail": data}`` with its
status: 400 bad request or corrupt image, 413 upload, pixels or output too large, 415 not an image,
422 invalid parameters, 503 busy, 504 request timeout; except a ``Host`` header that is not allowed
(DNS rebinding), answered 400 in plain text by Starlette's ``TrustedHostMiddleware``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import io
import ipaddress
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..data.io import IMAGE_FORMATS
from ..inference.remover import BackgroundRemover, RemovalOptions
from ..models.pretrained import DEFAULT_MODEL
from . import storage
from .errors import MB, ApiError, mb, one_line, os_reason, reason
from .matting import Matting, remove_with_matting
from .outputs import Png, png_file, save_png, stream, zip_file

log = logging.getLogger("u2net.serve")

STATIC_DIR = Path(__file__).parent / "static"
FORM_SLACK = 64 * 1024  # multipart boundaries, headers and the small form fields around the files
SMALL_BODY = 64 * 1024  # JSON requests and anything else
# Signatures of the allowed formats: a file starting with one that PIL cannot open is corrupt (400), not foreign (415).
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
# The endpoints that take a pool slot, admitted (or refused 503) before their body is read.
WORK_PATHS = ("/remove-background", "/batch-remove-background", "/remove-background/path")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


# -- settings ----------------------------------------------------------------------------------
def host_pattern(host: str) -> str:
    """``host`` as a ``Host`` header carries it: lower case, an IPv6 address in brackets; also
    ``*`` (any host) or ``*.example.com``. ValueError for anything else, such as a port."""
    text = host.strip().lower()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare).compressed}]"
        except ValueError:
            raise ValueError(f"allowed host {host!r}: give a host name or an address, without a port") from None
    wildcard_ok = text == "*" or (text.startswith("*.") and "*" not in text[1:])
    if not text or ("*" in text and not wildcard_ok) or "/" in text:
        raise ValueError(f"allowed host {host!r}: a host name, an address, '*' or '*.example.com'")
    return text


def default_allowed_hosts(bind: str) -> list[str]:
    """The ``Host`` headers to accept when listening on ``bind``: that name or address, plus the
    loopback names when it is a loopback one. A wildcard (``0.0.0.0``, ``::``) gives the loopback
    names only: the names remote clients use cannot be known here (list them in ``allowed_hosts``),
    and ``0.0.0.0`` itself is no name a legitimate client sends."""
    try:
        address = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        address = None
    if bind.strip() == "" or (address is not None and address.is_unspecified):
        return list(LOOPBACK_HOSTS)
    if bind.strip().lower() == "localhost" or (address is not None and address.is_loopback):
        return list(dict.fromkeys([host_pattern(bind), *LOOPBACK_HOSTS]))
    return [host_pattern(bind)]


@dataclass
class ServeSettings:
    """Limits and resources of the service.

    - ``storage_root``: the folder ``/remove-background/path`` reads from and writes to (``None``:
      that endpoint answers 501).
    - ``max_upload_mb``: largest file accepted, per image (413 beyond).
    - ``max_pixels``: largest width × height accepted, checked on the header before decoding (413).
    - ``max_matting_pixels``: the same with ``alpha_matting``, much lower: matting costs minutes and
      gigabytes per megapixel (413 beyond; the image is not downscaled).
    - ``max_output_mb``: largest PNG produced, per image (413 beyond, nothing sent or written).
    - ``max_batch``: most files in one batch request (400 beyond; 413 beyond ``workers + max_queue``).
    - ``workers``: inference threads; ``max_queue``: images allowed to wait for one (503 beyond).
    - ``request_timeout_s``: longest a request may wait for and run its inference (504 beyond).
    - ``cors_origins``: origins allowed to call the API from a browser (``["*"]`` for any).
    - ``allowed_hosts``: ``Host`` headers answered (others: 400), against DNS rebinding; default the
      loopback names (:func:`default_allowed_hosts` gives those for a bind address); ``["*"]`` for any.
    - ``device``: PyTorch device when :func:`create_app` loads the model from a path.
    - ``warmup``: run one tiny image through the model at start-up (first request not slower).
    """

    storage_root: str | os.PathLike | None = None
    max_upload_mb: float = 20.0
    max_pixels: int = 40_000_000
    max_matting_pixels: int = 250_000
    max_output_mb: float = 64.0
    max_batch: int = 10
    workers: int = 2
    max_queue: int = 64
    request_timeout_s: float = 60.0
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOOPBACK_HOSTS))
    device: str = "auto"
    warmup: bool = True

    def __post_init__(self) -> None:
        positive = ("max_upload_mb", "max_pixels", "max_matting_pixels", "max_output_mb", "max_batch", "workers")
        for name in (*positive, "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if isinstance(self.allowed_hosts, str):
            raise ValueError("allowed_hosts is a list of host names")
        self.allowed_hosts = list(dict.fromkeys(host_pattern(host) for host in self.allowed_hosts))
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts is empty: no request could be answered")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def max_output_bytes(self) -> int:
        return int(self.max_output_mb * MB)

    @property
    def capacity(self) -> int:
        """Images admitted at once: running plus waiting."""
        return self.workers + self.max_queue


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
        400: "bad request: corrupt image, invalid option, unsafe path, too many files, Host not allowed",
        413: "file too large, too many pixels (lower with alpha_matting), output too large, batch over capacity",
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
        # Only our decoders ever see an upload (no EPS/PDF/... plugins reachable from the network).
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({one_line(exc)})", {"filename": name}) from None
    except UnidentifiedImageError:
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ApiError(400, f"{name}: corrupt image (unreadable header)", {"filename": name}) from None
        raise ApiError(
            415,
            f"{name}: not an image, or not a supported format (PNG, JPEG, WebP, BMP, TIFF, GIF)",
            {"filename": name},
        ) from None
    except Exception as exc:  # a damaged header
        raise ApiError(400, f"{name}: corrupt image ({one_line(exc)})", {"filename": name}) from None
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


def open_upload(data: bytes, name: str, options: RemovalOptions, settings: ServeSettings) -> Image.Image:
    """:func:`open_image`, with the much lower pixel limit of alpha matting when it is asked for."""
    img = open_image(data, name, settings.max_pixels)
    width, height = img.size
    limit = settings.max_matting_pixels
    if options.alpha_matting and width * height > limit:
        raise ApiError(
            413,
            f"{name}: too many pixels for alpha_matting: {width}×{height} = {width * height:,}; the limit with "
            f"alpha_matting is {limit:,} (send a smaller image, or leave alpha_matting off)",
            {"filename": name, "width": width, "height": height, "max_matting_pixels": limit},
        )
    return img


def decode_image(img: Image.Image, name: str) -> Image.Image:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({one_line(exc)})", {"filename": name}) from None
    except Exception as exc:  # truncated or damaged data
        raise ApiError(400, f"{name}: corrupt or truncated image ({one_line(exc)})", {"filename": name}) from None
    return img


def safe_stem(filename: str | None, fallback: str = "image") -> str:
    """An ASCII file stem for a client-supplied name (any folders dropped)."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem[:100] or fallback


# -- the service -------------------------------------------------------------------------------
class Admission:
    """The pool slots one request holds: one from its admission, before its body is read, more
    once a batch's size is known; each passes to an inference job when it is queued (freed when the
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


class Service:
    """The shared model, its thread pool, the matting processes and what the endpoints report."""

    def __init__(self, remover: BackgroundRemover, settings: ServeSettings, model_file: Path | None) -> None:
        self.remover = remover
        self.settings = settings
        self.root = Path(settings.storage_root).expanduser().resolve() if settings.storage_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise ValueError(f"storage root {settings.storage_root}: not a folder")
        if self.root is not None and not storage.supported():
            raise ValueError("a storage root needs a platform that opens files without following links (POSIX)")
        self.model_file = model_file
        self.sha256 = _sha256(model_file) if model_file is not None else None
        self.started = time.monotonic()
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="u2net-serve")
        self.matting = Matting()
        self._pending = 0
        self._lock = threading.Lock()

    # -- pool --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Pool slots taken: admitted requests and their images, waiting or running."""
        return self._pending

    def admit(self) -> Admission:
        admission = Admission(self)
        admission.need(1)
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

    def remove(self, image: Image.Image, options: RemovalOptions, deadline: float) -> Image.Image:
        if options.alpha_matting:
            matte = lambda rgb, alpha: self.matting.matte(rgb, alpha, options, deadline)  # noqa: E731
            return remove_with_matting(self.remover, image, options, matte)
        return self.remover.remove(image, options)

    def cutout(self, img: Image.Image, name: str, options: RemovalOptions, deadline: float) -> Png:
        result = self.remove(decode_image(img, name), options, deadline)
        return png_file(result, self.settings.max_output_bytes, name)

    def cutout_file(
        self, source: tuple[str, ...], output: tuple[str, ...], name: str, options: RemovalOptions, deadline: float
    ) -> dict:
        """Read ``source``, write the cut-out to ``output`` atomically, both under the root and opened
        here, with no link followed; nothing is written once the request has timed out (``deadline``),
        since its client was told 504."""
        data, source_id = storage.read_file(self.root, source, "sourceImagePath", self.settings.max_upload_bytes)
        img = open_image(data, name, self.settings.max_pixels)
        with storage.OutputFile(self.root, output, "outputImagePath", source_id) as out:  # checked, held
            result = self.remove(decode_image(img, name), options, deadline)
            if time.monotonic() > deadline:
                raise ApiError(504, f"the request timed out after {self.settings.request_timeout_s:g} s")
            try:
                nbytes = out.write(lambda f: save_png(result, f, self.settings.max_output_bytes, name))
            except OSError as exc:
                raise ApiError(500, f"outputImagePath: cannot write the output ({os_reason(exc)})") from None
        return {"width": result.size[0], "height": result.size[1], "bytes": nbytes}

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
    if alpha_matting and importlib.util.find_spec("pymatting") is None:  # found, not imported: that takes a second
        raise ApiError(400, "alpha matting is not available on this server (pymatting not installed)")
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
    ``remove`` and ``mask``), or a checkpoint / ``.pth`` / ``.onnx`` path or pretrained tag, loaded
    here once (default: :data:`~u2net.models.pretrained.DEFAULT_MODEL`, shipped with the package). The
    model file's SHA-256 is computed here too."""
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
        service.close()

    app = FastAPI(
        title="U²-Net background removal",
        version=_version(),
        description="Remove the background of images with a U²-Net model. Errors are JSON "
        '`{"error": message, "detail": data}`. The web page is at `/`.',
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    _add_error_handlers(app)
    _add_upload_route(app, service)
    _add_batch_route(app, service)
    _add_path_route(app, service)
    _add_info_routes(app, service)
    _add_middleware(app, service)
    log.info("answering requests for the hosts %s", ", ".join(settings.allowed_hosts))
    return app


def _add_error_handlers(app: FastAPI) -> None:
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


async def read_upload(upload: UploadFile, settings: ServeSettings) -> bytes:
    name = upload.filename or "upload"
    limit = settings.max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise _too_large(name, upload.size, settings)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise _too_large(name, len(data), settings)
    return data


def _admission(request: Request) -> Admission:
    """The slot :class:`AdmissionMiddleware` took for this request."""
    return request.state.admission


def _add_upload_route(app: FastAPI, service: Service) -> None:
    settings = service.settings

    @app.post(
        "/remove-background",
        summary="Remove the background of one image",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the PNG cut-out (or mask)"}, **ERROR_RESPONSES},
    )
    async def remove_background(
        request: Request,
        file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, BMP, TIFF, GIF)")],
        options: Options,
    ) -> Response:
        started = time.perf_counter()
        name = file.filename or "upload"
        img = open_upload(await read_upload(file, settings), name, options, settings)  # header only: cheap
        png = await service.run(_admission(request), service.cutout, img, name, options, service.deadline())
        headers = {
            "Content-Disposition": f'inline; filename="{safe_stem(name)}.png"',
            "X-Image-Size": f"{png.size[0]}x{png.size[1]}",
            "X-Processing-Ms": f"{1000 * (time.perf_counter() - started):.1f}",
        }
        return stream(png.file, png.nbytes, "image/png", headers)


def _add_batch_route(app: FastAPI, service: Service) -> None:
    settings = service.settings

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
        request: Request,
        files: Annotated[list[UploadFile], File(description="the images")],
        options: Options,
    ) -> Response:
        admission = _admission(request)
        _check_batch_size(len(files), settings)
        admission.need(len(files))  # 503 now, before any upload is read into memory
        errors: list[dict] = []
        jobs: list[tuple[int, str, Image.Image]] = []
        for index, upload in enumerate(files):
            name = upload.filename or f"file{index + 1}"
            try:
                jobs.append((index, name, open_upload(await read_upload(upload, settings), name, options, settings)))
            except ApiError as exc:
                errors.append({"index": index, "filename": name, "status": exc.status, "error": exc.message})
        deadline = service.deadline()
        args = [(img, name, options, deadline) for _, name, img in jobs]
        members = _batch_members(jobs, await service.run_many(admission, service.cutout, args), errors)
        archive, nbytes = await asyncio.to_thread(zip_file, members, errors)  # off the event loop
        headers = {
            "Content-Disposition": 'attachment; filename="cutouts.zip"',
            "X-Files-Done": str(len(members)),
            "X-Files-Failed": str(len(errors)),
        }
        return stream(archive, nbytes, "application/zip", headers)


def _check_batch_size(count: int, settings: ServeSettings) -> None:
    if count > settings.max_batch:
        raise ApiError(
            400,
            f"too many files: {count}; at most {settings.max_batch} per request",
            {"files": count, "max_batch": settings.max_batch},
        )
    if count > settings.capacity:  # would wait for slots that never exist: 503 forever
        raise ApiError(
            413,
            f"too many files: {count}; this server admits at most {settings.capacity} images at once "
            f"(workers + max_queue), so send at most {settings.capacity} per request",
            {"files": count, "capacity": settings.capacity},
        )


def _batch_members(
    jobs: list[tuple[int, str, Image.Image]], results: list, errors: list[dict]
) -> list[tuple[str, Png]]:
    """The zip's ``(name, png)`` for the jobs that worked; the failures are added to ``errors``
    (sorted by file index)."""
    members: list[tuple[str, Png]] = []
    used: set[str] = set()
    for (index, name, _), result in zip(jobs, results):
        if isinstance(result, BaseException):
            status, message = (result.status, result.message) if isinstance(result, ApiError) else (500, reason(result))
            if not isinstance(result, ApiError):
                log.error("batch: %s failed: %s", name, message)
            errors.append({"index": index, "filename": name, "status": status, "error": message})
            continue
        members.append((_unique(safe_stem(name, f"image{index + 1}"), used), result))
    errors.sort(key=lambda e: e["index"])
    return members


def _add_path_route(app: FastAPI, service: Service) -> None:
    @app.post(
        "/remove-background/path",
        summary="Remove the background of an image on the shared storage volume",
        responses={**ERROR_RESPONSES, 404: {"model": ErrorBody}, 501: {"model": ErrorBody}},
    )
    async def remove_background_path(request: Request, body: PathRequest) -> dict:
        if service.root is None:
            raise ApiError(501, "the path endpoint is disabled: start the server with a storage root (--storage-root)")
        # Checked here as text only: the files are opened in the worker, relative to the root's descriptor.
        source = storage.split_path(body.source_image_path, "sourceImagePath")
        output = storage.split_path(body.output_image_path, "outputImagePath")
        if PurePosixPath(output[-1]).suffix.lower() != ".png":
            raise ApiError(
                400, "outputImagePath: the output is a PNG file; name it '.png'", {"path": body.output_image_path}
            )
        started = time.perf_counter()
        options = RemovalOptions(threshold=body.threshold)
        args = (source, output, body.source_image_path, options, service.deadline())
        written = await service.run(_admission(request), service.cutout_file, *args)
        return {
            "sourceImagePath": body.source_image_path,
            "outputImagePath": "/".join(output),
            **written,
            "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
        }


def _add_info_routes(app: FastAPI, service: Service) -> None:
    settings = service.settings

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
                "max_matting_pixels": settings.max_matting_pixels,
                "max_output_mb": settings.max_output_mb,
                "max_batch": min(settings.max_batch, settings.capacity),
                "request_timeout_s": settings.request_timeout_s,
            },
        }

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _add_middleware(app: FastAPI, service: Service) -> None:
    """From the inside out (each ``add_middleware`` wraps the ones before): the pool admission, the
    body limit, CORS (so that even a 413 or 503 carries its headers), then the Host check outermost."""
    settings = service.settings
    app.add_middleware(AdmissionMiddleware, service=service)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Content-Disposition", "X-Image-Size", "X-Processing-Ms", "X-Files-Done", "X-Files-Failed"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)


class AdmissionMiddleware:
    """503 for a work request while every pool slot is taken, before its body is read (an upload
    is not even received); an admitted request holds one slot (``request.state.admission``) until
    its jobs take it over or it ends."""

    def __init__(self, app, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(WORK_PATHS):
            await self.app(scope, receive, send)
            return
        try:
            admission = self.service.admit()
        except ApiError as exc:
            await _error_response(exc.status, exc.message, exc.detail, exc.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["admission"] = admission
        try:
            await self.app(scope, receive, send)
        finally:
            admission.close()


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
            f"the request is too large: at most {mb(limit)} for this endpoint "
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
def _too_large(name: str, size: int, settings: ServeSettings) -> ApiError:
    return ApiError(
        413,
        f"{name}: the file is too large: {mb(size)}; the limit is {settings.max_upload_mb:g} MB",
        {"filename": name, "size_bytes": size, "limit_bytes": settings.max_upload_bytes},
    )


def _unique(stem: str, used: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = [
    "AdmissionMiddleware",
    "ApiError",
    "BodyLimitMiddleware",
    "ServeSettings",
    "create_app",
    "default_allowed_hosts",
    "open_image",
]
