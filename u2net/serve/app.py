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
``max_queue`` more images waiting: beyond that 503, answered before an upload is read; a request holds
a slot per upload's worth of body); alpha matting runs in a child process killed at the request's
deadline. Outputs are spooled (memory, then a temporary file) and streamed. Every error is JSON
``{"error": message, "detail": data}`` with its status: 400 bad request or corrupt image, 408 upload
body too slow (``upload_timeout_s``), 413 upload, pixels or output too large, 415 not an image, 422
invalid parameters or unknown form fields, 503 busy, 504 request timeout; except a ``Host`` header that
is not allowed (DNS rebinding), answered 400 in plain text by Starlette's ``TrustedHostMiddleware``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..inference.remover import BackgroundRemover
from ..models.pretrained import DEFAULT_MODEL
from .middleware import AdmissionMiddleware, BodyLimitMiddleware
from .routes import add_error_handlers, add_routes
from .service import Service
from .settings import ServeSettings

log = logging.getLogger("u2net.serve")


def create_app(
    remover_or_model_path: BackgroundRemover | str | os.PathLike = DEFAULT_MODEL,
    settings: ServeSettings | None = None,
    choices: Sequence[str | os.PathLike] = (),
    name: str | None = None,
) -> FastAPI:
    """The FastAPI app serving a model: a :class:`BackgroundRemover` (or anything with its
    ``remove`` and ``mask``), or a checkpoint / ``.pth`` / ``.onnx`` path or pretrained tag, loaded
    here once (default: :data:`~u2net.models.pretrained.DEFAULT_MODEL`, shipped with the package), and
    the ``choices`` beside it (paths or tags a request may pick with its ``model`` field, by tag or file
    stem; ``name`` names the default model, else its tag or file stem). The model files' SHA-256 is computed
    here too."""
    settings = settings or ServeSettings()
    service = Service.load(remover_or_model_path, settings, choices, name)

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
    add_error_handlers(app)
    add_routes(app, settings)
    _add_middleware(app, service)
    log.info("answering requests for the hosts %s", ", ".join(settings.allowed_hosts))
    return app


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
            expose_headers=[
                "Content-Disposition",
                "X-Image-Size",
                "X-Processing-Ms",
                "X-Confidence",
                "X-QA-Flags",
                "X-Files-Done",
                "X-Files-Failed",
            ],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)


def _version() -> str:
    from .. import __version__

    return __version__


__all__ = ["create_app"]
