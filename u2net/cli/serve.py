"""``u2net serve``: the REST API and web page (FastAPI, uvicorn), with the service's limits as flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import MissingExtraError, one_line, require_extra
from ..models.pretrained import PRETRAINED, bundled_tags
from ..serve.settings import ServeSettings  # no FastAPI needed for the defaults
from . import common
from .common import Command, UsageError, int_in, names, positive_float, shown

positive_int = int_in(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_model_arguments(parser)
    parser.add_argument(
        "--choices",
        type=names,
        default=bundled_tags(),
        metavar="MODEL[,MODEL...]",
        help=f"further models that requests and the web page may pick (tags or files, loaded with --device; "
        f"default: the bundled {', '.join(bundled_tags())}; '' for --model alone)",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    server.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    server.add_argument(
        "--storage-root",
        type=Path,
        metavar="DIR",
        help="folder that POST /remove-background/path reads and writes under (default: endpoint disabled)",
    )
    server.add_argument(
        "--torch-threads",
        type=positive_int,
        metavar="N",
        help="PyTorch intra-op threads, shared by the workers (default: CPU cores / workers, at least 1)",
    )
    add_limit_arguments(server)
    server.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls from it (repeat)"
    )
    server.add_argument(
        "--allowed-hosts",
        type=names,
        action="extend",
        default=[],
        metavar="HOST[,HOST...]",
        help="Host headers to answer besides the bound host (and the loopback names when bound to loopback); "
        "others get 400, against DNS rebinding. Name every host or address clients use with --host 0.0.0.0; "
        "'*' for any (repeat)",
    )
    server.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


# --option: (ServeSettings field, type, metavar, help); the default is the field's.
_LIMITS = {
    "--workers": ("workers", positive_int, "N", "inference threads"),
    "--max-queue": ("max_queue", int_in(0), "N", "images waiting beyond the workers; more: 503"),
    "--max-upload-mb": ("max_upload_mb", positive_float, "MB", "largest upload per image"),
    "--max-pixels": ("max_pixels", positive_int, "N", "width x height per image"),
    "--max-matting-pixels": ("max_matting_pixels", positive_int, "N", "width x height per image with alpha_matting"),
    "--max-output-mb": ("max_output_mb", positive_float, "MB", "largest PNG produced per image"),
    "--max-batch": ("max_batch", positive_int, "N", "files per batch request"),
    "--timeout": ("request_timeout_s", positive_float, "S", "per request, seconds"),
    "--upload-timeout": ("upload_timeout_s", positive_float, "S", "for a request body to arrive, seconds; more: 408"),
}


def add_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The limits of :class:`~u2net.serve.ServeSettings`, with its defaults (408, 413, 503 or 504 beyond)."""
    defaults = ServeSettings()
    for option, (name, kind, metavar, text) in _LIMITS.items():
        default = getattr(defaults, name)
        group.add_argument(option, dest=name, type=kind, default=default, metavar=metavar, help=f"{text} (%(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        require_extra("serving", "serve", fastapi="FastAPI", uvicorn="uvicorn", multipart="python-multipart")
    except MissingExtraError as exc:
        raise UsageError(str(exc)) from None
    import uvicorn

    from ..serve import create_app, default_allowed_hosts
    from ..serve.service import model_key

    if args.storage_root is not None and not args.storage_root.expanduser().is_dir():
        raise UsageError(f"{args.storage_root}: storage root is not a folder")
    try:
        settings = ServeSettings(
            storage_root=args.storage_root,
            cors_origins=args.cors_origin,
            allowed_hosts=default_allowed_hosts(args.host) + args.allowed_hosts,
            device=args.device,
            precision=args.precision,
            **{name: getattr(args, name) for name, *_ in _LIMITS.values()},
        )
    except ValueError as exc:  # an --allowed-hosts entry that is no host name
        raise UsageError(str(exc)) from None
    remover = common.load_remover(args)
    choices = [choice for choice in args.choices if choice != str(args.model)]
    for choice in choices:
        if choice not in PRETRAINED and not Path(choice).expanduser().is_file():
            raise UsageError(f"{shown(choice)}: --choices names no model file or pretrained tag")
    if getattr(remover.predictor.info, "backend", None) == "pytorch":
        import torch

        # Each worker runs its own forward pass: more intra-op threads than cores only adds contention.
        torch.set_num_threads(args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers))
    try:
        app = create_app(remover, settings, choices, name=model_key(args.model))
    except (ValueError, OSError, RuntimeError) as exc:
        raise UsageError(f"cannot load a model of --choices: {one_line(exc)}") from None
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


COMMAND = Command(
    "serve",
    "serve a model over HTTP: REST API and a web page",
    add_arguments,
    run,
    description="Serve one model with FastAPI: POST /remove-background, /batch-remove-background, "
    "/remove-background/path; GET /health, /model-info; the web page at / and the API docs at /docs.",
)
