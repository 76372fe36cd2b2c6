"""Serving: a REST service (FastAPI) and a web page for background removal with one shared model.

    u2net serve --model best.onnx --port 8000          # then open http://127.0.0.1:8000/
    u2net serve                                        # the bundled U²-Net† (u2netp.duts), no download

    from u2net.serve import ServeSettings, create_app
    app = create_app("best.onnx", ServeSettings(storage_root="/data", workers=2))
    app = create_app()                                 # the bundled u2netp.duts
    app = create_app(settings=ServeSettings(allowed_hosts=["api.example.com"]))  # Host headers answered

Needs the ``serve`` extra: ``pip install -e ".[serve]"`` in the repository.
"""

from .app import ApiError, ServeSettings, create_app, default_allowed_hosts

__all__ = ["ApiError", "ServeSettings", "create_app", "default_allowed_hosts"]
