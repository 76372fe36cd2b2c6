"""The endpoints, at module level: each reads the app's :class:`~u2net.serve.service.Service` (``app.state``)
through a dependency, and :func:`add_routes` registers them on an app with the summaries of its settings."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..inference.options import OptionSpec, RemovalOptions, front_end_specs, missing_pymatting, options_from
from . import storage
from .errors import ApiError, reason
from .images import open_upload, read_upload, safe_stem
from .outputs import Png, error_response, stream, zip_file
from .service import Admission, Service
from .settings import ServeSettings

log = logging.getLogger("u2net.serve")

STATIC_DIR = Path(__file__).parent / "static"


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in one sentence")
    detail: Any = Field(None, description="machine-readable details (limits, sizes, validation errors)")


MODEL_HELP = "which of the server's models (GET /model-info: choices); empty for its default"


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "bad request: corrupt image, invalid option, unsafe path, too many files, Host not allowed",
        408: "the request body did not arrive within the upload timeout",
        413: "file too large, too many pixels (lower with alpha_matting), output too large, batch over capacity",
        415: "not an image (or an unsupported format)",
        422: "invalid parameters, unknown form fields",
        503: "too many requests waiting (or a body larger than the free pool slots allow)",
        504: "the request timed out",
    }.items()
}


# -- dependencies ------------------------------------------------------------------------------
def get_service(request: Request) -> Service:
    return request.app.state.service


def get_admission(request: Request) -> Admission:
    """The slot :class:`~u2net.serve.middleware.AdmissionMiddleware` took for this request."""
    return request.state.admission


# -- the removal options as form fields and JSON members, generated from their one declaration ------------
API_SPECS = front_end_specs("api")
TEXT_LIMIT = 64  # the longest text an option field takes (a colour's name); a transport limit, not an option's


def _field_limits(spec: OptionSpec) -> dict[str, Any]:
    """The declaration's bounds as pydantic's constraints (a 422 before the library sees the value)."""
    if spec.choices is not None or spec.type is bool:
        return {}
    if spec.type is str:
        return {"max_length": TEXT_LIMIT}
    limits: dict[str, Any] = {} if spec.high is None else {"le": spec.high}
    if spec.low is not None:
        limits["gt" if spec.open_low else "ge"] = spec.low
    return limits


def _description(spec: OptionSpec) -> str:
    choices = f" ({', '.join(map(str, spec.choices))})" if spec.choices is not None else ""
    return f"{spec.help}{choices}; not given: the preset's or the library's default"


def _options_or_error(values: dict[str, Any]) -> RemovalOptions:
    """The options of a request (:func:`~u2net.inference.options.options_from`); 400 naming the bad one. An empty
    field (``bg_color=``, as HTML forms send an empty input) is one not given."""
    values = {name: None if value == "" else value for name, value in values.items()}
    try:
        options = options_from(values)
    except ValueError as exc:
        raise ApiError(400, str(exc), {name: value for name, value in values.items() if value is not None}) from None
    needing = [name + (f" {value}" if value else "") for name, value in missing_pymatting(options)]
    if needing:
        raise ApiError(400, f"{' and '.join(needing)}: not available on this server (pymatting not installed)")
    return options


def form_options(**values: Any) -> RemovalOptions:
    """The removal options of a form request (its signature is generated below: one field per option)."""
    return _options_or_error(values)


form_options.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            spec.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[spec.type | None, Form(description=_description(spec), **_field_limits(spec))],
        )
        for spec in API_SPECS
    ],
    return_annotation=RemovalOptions,
)


# The JSON body of the path endpoint: the two paths, the model, and the same options as the form's.
PathRequest = create_model(
    "PathRequest",
    __config__=ConfigDict(populate_by_name=True, extra="forbid"),
    source_image_path=(
        str,
        Field(
            alias="sourceImagePath", min_length=1, max_length=4096, description="image to read, relative to the root"
        ),
    ),
    output_image_path=(
        str,
        Field(alias="outputImagePath", min_length=1, max_length=4096, description="PNG to write, relative to the root"),
    ),
    model=(str | None, Field(None, max_length=200, description=MODEL_HELP)),
    **{
        spec.name: (spec.type | None, Field(None, description=_description(spec), **_field_limits(spec)))
        for spec in API_SPECS
    },
)


FORM_FIELDS = frozenset(inspect.signature(form_options).parameters) | {"model"}  # besides the file field


def known_fields(file_field: str) -> Any:
    """A dependency: 422 for a form field that neither ``file_field`` nor an option is (a misspelt option
    would otherwise be ignored silently, where the JSON endpoint refuses it)."""
    known = FORM_FIELDS | {file_field}

    async def check(request: Request) -> None:
        for name in await request.form():  # parsed already, before any dependency runs
            if name not in known:
                raise ApiError(
                    422, f"unknown form field {name!r}; this endpoint takes {', '.join(sorted(known))}", {"field": name}
                )

    return Depends(check)


ServiceDep = Annotated[Service, Depends(get_service)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
Options = Annotated[RemovalOptions, Depends(form_options)]
ModelName = Annotated[str | None, Form(max_length=200, description=MODEL_HELP)]


# -- endpoints ---------------------------------------------------------------------------------
async def remove_background(
    service: ServiceDep,
    admission: AdmissionDep,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, WebP, BMP, TIFF, GIF)")],
    options: Options,
    model: ModelName = None,
) -> Response:
    started = time.perf_counter()
    settings = service.settings
    service.remover_for(model)  # an unknown name is a 400 before the upload is read
    name = file.filename or "upload"
    img = open_upload(await read_upload(file, settings), name, options, settings)  # header only: cheap
    png = await service.run(admission, service.cutout, img, name, options, service.deadline(), model)
    headers = {
        "Content-Disposition": f'inline; filename="{safe_stem(name)}.png"',
        "X-Image-Size": f"{png.size[0]}x{png.size[1]}",
        "X-Processing-Ms": f"{1000 * (time.perf_counter() - started):.1f}",
        "X-Confidence": f"{png.quality.confidence:.4f}",
        "X-QA-Flags": png.quality.header_value(),
    }
    return stream(png.file, png.nbytes, "image/png", headers)


async def batch_remove_background(
    service: ServiceDep,
    admission: AdmissionDep,
    files: Annotated[list[UploadFile], File(description="the images")],
    options: Options,
    model: ModelName = None,
) -> Response:
    settings = service.settings
    _check_batch_size(len(files), settings)
    service.remover_for(model)
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
    args = [(img, name, options, deadline, model) for _, name, img in jobs]
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
            if isinstance(result, ApiError):
                status, message = result.status, result.message
            else:  # the details stay in the log: an exception's text may name server paths
                status, message = 500, f"internal error ({type(result).__name__})"
                log.error("batch: %s failed: %s", name, reason(result), exc_info=result)
            errors.append({"index": index, "filename": name, "status": status, "error": message})
            continue
        members.append((_unique(safe_stem(name, f"image{index + 1}"), used), result))
    errors.sort(key=lambda e: e["index"])
    return members


def _unique(stem: str, used: set[str]) -> str:
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


async def remove_background_path(service: ServiceDep, admission: AdmissionDep, body: PathRequest) -> dict:
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
    service.remover_for(body.model)
    options = _options_or_error({spec.name: getattr(body, spec.name) for spec in API_SPECS})
    args = (source, output, body.source_image_path, options, service.deadline(), body.model)
    written = await service.run(admission, service.cutout_file, *args)
    return {
        "sourceImagePath": body.source_image_path,
        "outputImagePath": "/".join(output),
        **written,
        "elapsed_ms": round(1000 * (time.perf_counter() - started), 1),
    }


async def health(service: ServiceDep) -> dict:
    return {
        "status": "ok",
        "model_loaded": service.remover is not None,
        "uptime_s": round(time.monotonic() - service.started, 3),
        "workers": service.settings.workers,
        "pending": service.pending,
    }


async def model_info(service: ServiceDep) -> dict:
    settings = service.settings
    return {
        **service.model_info(),
        "limits": {
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "max_matting_pixels": settings.max_matting_pixels,
            "max_output_mb": settings.max_output_mb,
            "max_batch": min(settings.max_batch, settings.capacity),
            "request_timeout_s": settings.request_timeout_s,
            "upload_timeout_s": settings.upload_timeout_s,
        },
    }


async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def add_routes(app: FastAPI, settings: ServeSettings) -> None:
    """Every endpoint, the web page and its static files; the batch's summary names this app's ``max_batch``."""
    png = {200: {"content": {"image/png": {}}, "description": "the PNG cut-out (or mask)"}, **ERROR_RESPONSES}
    zipped = {
        200: {
            "content": {"application/zip": {}},
            "description": "a zip of <stem>.png files and errors.json: [{filename, status, error}] for the "
            "files that failed",
        },
        **ERROR_RESPONSES,
    }
    post = {"methods": ["POST"]}
    app.add_api_route(
        "/remove-background",
        remove_background,
        summary="Remove the background of one image",
        dependencies=[known_fields("file")],
        response_class=Response,
        responses=png,
        **post,
    )
    app.add_api_route(
        "/batch-remove-background",
        batch_remove_background,
        summary=f"Remove the background of up to {settings.max_batch} images",
        dependencies=[known_fields("files")],
        response_class=Response,
        responses=zipped,
        **post,
    )
    app.add_api_route(
        "/remove-background/path",
        remove_background_path,
        summary="Remove the background of an image on the shared storage volume",
        responses={**ERROR_RESPONSES, 404: {"model": ErrorBody}, 501: {"model": ErrorBody}},
        **post,
    )
    app.add_api_route("/health", health, summary="Liveness and readiness", methods=["GET"])
    app.add_api_route("/model-info", model_info, summary="The model being served", methods=["GET"])
    app.add_api_route("/", index, include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# -- errors ------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.detail, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = jsonable_encoder(exc.errors(), exclude={"input", "ctx", "url"})
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in errors)
    return error_response(422, f"invalid request: {where}", errors)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    return error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(500, "internal server error", {"type": type(exc).__name__})


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON: ours, validation (422), Starlette's (404, 405 ...), anything else (500)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


__all__ = ["ERROR_RESPONSES", "ErrorBody", "PathRequest", "add_error_handlers", "add_routes", "form_options"]
