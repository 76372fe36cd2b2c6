"""The ``u2net`` command.

    u2net remove photo.jpg cutout.png                      # RGBA cut-out with the bundled U²-Net† (offline)
    u2net remove photos/ cutouts/ --model best.onnx --crop --bg-color white
    u2net remove photos/ masks/ --mask-only --threshold 0.5 --overwrite

Exit status: 0 when everything was processed (or skipped), 1 when some file failed, 2 for usage
errors (bad arguments, missing input or model).

Each subcommand is one ``Command``: a name, a help line, a function adding its arguments and one
running it (``args -> exit status``); add a new one to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import one_line
from .inference.predictor import BACKENDS
from .models.pretrained import DEFAULT_MODEL


class UsageError(Exception):
    """Bad input from the user: reported as one ``error: ...`` line, exit status 2."""


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


# -- u2net remove ------------------------------------------------------------------------------
def _shown(text: object) -> str:
    """``text`` safe to print on one line: control and other non-printable characters (newlines, ESC,
    bidi overrides) as ``\\n``, ``\\x1b``, ``\\u202e``; bytes of a non-UTF-8 file name as ``\\xff``. A
    file name can then neither start a line of its own (a fake "failed:") nor drive the terminal."""
    out = []
    for ch in str(text):
        if "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8, as os.fsdecode keeps it
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _say(line: str, stream=None) -> None:
    """Print ``line``; what the stream's encoding cannot hold is written as backslash escapes, so a
    strict ASCII or Latin-1 stdout never raises."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=stream)


def _color(text: str) -> tuple[int, ...]:
    from .inference.remover import parse_color

    try:
        return parse_color(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability in [0, 1] expected, got {text}")
    return value


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"a value {bounds} expected, got {text}")
        return value

    return parse


_byte = _int_in(0, 255)
_non_negative = _int_in(0)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --backend and --device, shared by the subcommands that load a model."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="PATH",
        default=DEFAULT_MODEL,
        help=f"checkpoint, official .pth, .onnx file or pretrained tag (default: {DEFAULT_MODEL}, shipped with the "
        "package: no download; other tags are downloaded once)",
    )
    model.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="auto: ONNX Runtime for .onnx files (CUDA provider when available), PyTorch otherwise; onnxruntime: "
        "also for a tag whose weights here are ONNX (the bundled u2netp.duts); pytorch: always PyTorch (an .onnx "
        "file is imported)",
    )
    model.add_argument("--device", default="auto", help="PyTorch device: auto (CUDA, MPS, CPU), cpu, cuda, cuda:1 ...")


def _add_remove_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an image, or a folder searched recursively")
    parser.add_argument(
        "output", help="the output .png (or a folder) for an image; a folder mirroring the input tree for a folder"
    )
    _add_model_arguments(parser)
    _add_output_arguments(parser)
    _add_mask_arguments(parser)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference.remover import RemovalOptions

    defaults = RemovalOptions()  # the library's defaults, not copies of them
    output = parser.add_argument_group("output")
    output.add_argument("--mask-only", action="store_true", help="write the alpha mask (grayscale) only")
    output.add_argument("--crop", action="store_true", help="crop to the subject's bounding box")
    output.add_argument(
        "--padding",
        type=_non_negative,
        default=defaults.padding,
        metavar="N",
        help=f"padding around the crop, px (default {defaults.padding})",
    )
    output.add_argument(
        "--crop-threshold",
        type=_int_in(1, 255),
        default=defaults.crop_threshold,
        metavar="A",
        help=f"pixels with alpha >= A count as the subject when cropping (default {defaults.crop_threshold})",
    )
    background = output.add_mutually_exclusive_group()
    background.add_argument(
        "--bg-color",
        type=_color,
        metavar="COLOR",
        help="put a colour behind the subject: #RRGGBB, #RRGGBBAA, r,g,b[,a] or a name",
    )
    background.add_argument(
        "--bg-image", type=Path, metavar="PATH", help="put an image behind the subject (scaled to cover)"
    )
    output.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")


def _add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference.remover import RemovalOptions

    defaults = RemovalOptions()
    mask = parser.add_argument_group("mask")
    mask.add_argument(
        "--threshold",
        type=_probability,
        default=defaults.threshold,
        metavar="T",
        help="binarise the mask at this probability (0-1)",
    )
    mask.add_argument(
        "--post-process", action="store_true", help="morphological clean-up: opening/closing, drop small islands"
    )
    mask.add_argument("--alpha-matting", action="store_true", help="refine edges with alpha matting (pymatting)")
    mask.add_argument(
        "--fg-threshold",
        type=_byte,
        default=defaults.fg_threshold,
        metavar="N",
        help=f"alpha matting: sure foreground above ({defaults.fg_threshold})",
    )
    mask.add_argument(
        "--bg-threshold",
        type=_byte,
        default=defaults.bg_threshold,
        metavar="N",
        help=f"alpha matting: sure background below ({defaults.bg_threshold})",
    )
    mask.add_argument(
        "--erode-size",
        type=_non_negative,
        default=defaults.erode_size,
        metavar="N",
        help=f"alpha matting: trimap erosion, px ({defaults.erode_size})",
    )
    mask.add_argument(
        "--no-stretch",
        dest="stretch",
        action="store_false",
        help="keep the model's probabilities (default: min-max normalise them, as the original U2-Net and rembg do)",
    )
    mask.add_argument(
        "--rembg-compatible", action="store_true", help="compute the mask exactly as rembg's u2net_custom session"
    )


def _load_remover(args: argparse.Namespace):
    from .inference import BackgroundRemover, Predictor
    from .models.pretrained import PRETRAINED, WeightsDownloadError

    model = str(args.model)
    if model not in PRETRAINED and not Path(model).expanduser().exists():
        raise UsageError(f"{model}: model file not found (give --model a checkpoint, .pth, .onnx or pretrained tag)")
    source = model if model in PRETRAINED else Path(model).expanduser()
    try:
        return BackgroundRemover(Predictor.from_path(source, args.device, backend=args.backend))
    except RuntimeError as exc:
        if isinstance(exc, WeightsDownloadError):
            raise UsageError(
                f"could not download the model {model!r} (offline?); pass --model PATH to a local "
                f"checkpoint, .pth or .onnx file. ({one_line(exc)})"
            ) from None
        raise UsageError(f"{model}: cannot load the model: {one_line(exc)}") from None
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise UsageError(f"{model}: cannot load the model: {one_line(exc)}") from None
    except Exception as exc:  # e.g. onnxruntime's own errors for a damaged .onnx file
        raise UsageError(f"{model}: cannot load the model: {type(exc).__name__}: {one_line(exc)}") from None


def _run_remove(args: argparse.Namespace) -> int:
    from .data.io import read_image
    from .inference.remover import RemovalOptions, plan_outputs, remove_batch

    if not Path(args.input).exists():
        raise UsageError(f"{_shown(args.input)}: no such file or folder")
    background = None
    if args.bg_image is not None:
        if not args.bg_image.is_file():
            raise UsageError(f"{_shown(args.bg_image)}: background image not found")
        try:  # decoded once, here: a bad file is one usage error, not a failure of every image
            background = read_image(args.bg_image)
        except Exception as exc:
            raise UsageError(
                f"{_shown(args.bg_image)}: cannot read the background image: {_shown(one_line(exc))}"
            ) from None
    if args.alpha_matting:
        try:
            import pymatting  # noqa: F401
        except ImportError:
            raise UsageError("--alpha-matting needs pymatting: pip install -e '.[matting]' in the repository") from None
    try:
        options = RemovalOptions(
            mask_only=args.mask_only,
            crop=args.crop,
            padding=args.padding,
            crop_threshold=args.crop_threshold,
            threshold=args.threshold,
            alpha_matting=args.alpha_matting,
            fg_threshold=args.fg_threshold,
            bg_threshold=args.bg_threshold,
            erode_size=args.erode_size,
            post_process=args.post_process,
            bg_color=args.bg_color,
            bg_image=background,
            stretch=args.stretch,
            rembg_compatible=args.rembg_compatible,
        )
        plan_outputs(args.input, args.output)  # bad input/output combinations fail before the model loads
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(_shown(exc)) from None
    remover = _load_remover(args)
    report = remove_batch(remover, args.input, args.output, options, overwrite=args.overwrite, progress=not args.quiet)
    _say(report.summary())
    for path, reason in report.left_out:
        _say(f"  skipped: {_shown(path)}: {_shown(reason)}")
    for path, reason in report.failures:
        _say(f"  failed: {_shown(path)}: {_shown(reason)}")
    return 1 if report.failed else 0


REMOVE = Command(
    "remove",
    "remove the background of an image or of every image in a folder",
    _add_remove_arguments,
    _run_remove,
    description="Cut out the subject of an image (or of every image under a folder, recursively) and write PNGs: "
    "RGBA cut-outs, masks, or composites on a new background. Existing outputs are skipped unless --overwrite.",
)


# -- u2net serve -------------------------------------------------------------------------------
_positive_int = _int_in(1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a value > 0 expected, got {text}")
    return value


def _host_names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
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
        type=_positive_int,
        metavar="N",
        help="PyTorch intra-op threads, shared by the workers (default: CPU cores / workers, at least 1)",
    )
    _add_limit_arguments(server)
    server.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls from it (repeat)"
    )
    server.add_argument(
        "--allowed-hosts",
        type=_host_names,
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
    "--workers": ("workers", _positive_int, "N", "inference threads"),
    "--max-queue": ("max_queue", _non_negative, "N", "images waiting beyond the workers; more: 503"),
    "--max-upload-mb": ("max_upload_mb", _positive_float, "MB", "largest upload per image"),
    "--max-pixels": ("max_pixels", _positive_int, "N", "width x height per image"),
    "--max-matting-pixels": ("max_matting_pixels", _positive_int, "N", "width x height per image with alpha_matting"),
    "--max-output-mb": ("max_output_mb", _positive_float, "MB", "largest PNG produced per image"),
    "--max-batch": ("max_batch", _positive_int, "N", "files per batch request"),
    "--timeout": ("request_timeout_s", _positive_float, "S", "per request, seconds"),
}


def _add_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The limits of :class:`~u2net.serve.ServeSettings`, with its defaults (413, 503 or 504 beyond)."""
    from .serve.settings import ServeSettings  # no FastAPI needed for the defaults

    defaults = ServeSettings()
    for option, (name, kind, metavar, text) in _LIMITS.items():
        default = getattr(defaults, name)
        group.add_argument(option, dest=name, type=kind, default=default, metavar=metavar, help=f"{text} (%(default)s)")


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .serve import ServeSettings, create_app, default_allowed_hosts
    except ImportError as exc:
        raise UsageError(
            f"serving needs FastAPI and uvicorn: pip install -e '.[serve]' in the repository ({exc})"
        ) from None
    if args.storage_root is not None and not args.storage_root.expanduser().is_dir():
        raise UsageError(f"{args.storage_root}: storage root is not a folder")
    try:
        settings = ServeSettings(
            storage_root=args.storage_root,
            cors_origins=args.cors_origin,
            allowed_hosts=default_allowed_hosts(args.host) + args.allowed_hosts,
            device=args.device,
            **{name: getattr(args, name) for name, *_ in _LIMITS.values()},
        )
    except ValueError as exc:  # an --allowed-hosts entry that is no host name
        raise UsageError(str(exc)) from None
    remover = _load_remover(args)
    if getattr(remover.predictor.info, "backend", None) == "pytorch":
        import torch

        # Each worker runs its own forward pass: more intra-op threads than cores only adds contention.
        torch.set_num_threads(args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers))
    app = create_app(remover, settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


SERVE = Command(
    "serve",
    "serve a model over HTTP: REST API and a web page",
    _add_serve_arguments,
    _run_serve,
    description="Serve one model with FastAPI: POST /remove-background, /batch-remove-background, "
    "/remove-background/path; GET /health, /model-info; the web page at / and the API docs at /docs.",
)

COMMANDS: list[Command] = [REMOVE, SERVE]


# -- entry point -------------------------------------------------------------------------------
def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="u2net", description="U²-Net background removal and tools.")
    parser.add_argument("--version", action="version", version=f"u2net {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        child = sub.add_parser(command.name, help=command.help, description=command.description or command.help)
        command.add_arguments(child)
        child.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``u2net`` with ``argv`` (default: the command line); returns the exit status."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
