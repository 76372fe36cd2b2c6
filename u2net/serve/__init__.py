"""Serving: a REST service (FastAPI) and a web page for background removal with one shared model.

    u2net serve --model best.onnx --port 8000          # then open http://127.0.0.1:8000/
    u2net serve                                        # the bundled U²-Net† (u2netp.duts), no download

    from u2net.serve import ServeSettings, create_app
    app = create_app("best.onnx", ServeSettings(storage_root="/data", workers=2))
    app = create_app()                                 # the bundled u2netp.duts
    app = create_app(settings=ServeSettings(allowed_hosts=["api.example.com"]))  # Host headers answered

Needs the ``serve`` extra: ``pip install 'u2net[serve]'`` (from a checkout: ``pip install -e '.[serve]'``).

Modules: ``app`` (:func:`create_app`: the app, its middleware and lifespan), ``routes`` (the endpoints),
``service`` (the worker pool, admission and remover calls), ``middleware`` (admission and body limits),
``images`` (uploads: limits, decoding), ``storage`` (the path endpoint's files), ``settings``
(:class:`ServeSettings`, allowed hosts), ``matting``, ``outputs`` and ``errors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ApiError
from .settings import ServeSettings, default_allowed_hosts

if TYPE_CHECKING:
    from .app import create_app


def __getattr__(name: str):
    # create_app needs FastAPI, imported on first use: the settings (and the CLI's defaults) work without it.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ApiError", "ServeSettings", "create_app", "default_allowed_hosts"]
