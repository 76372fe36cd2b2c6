"""The ``u2net`` command.

    u2net remove photo.jpg cutout.png                      # RGBA cut-out with the bundled U²-Net† (offline)
    u2net remove photos/ cutouts/ --model best.onnx --crop --bg-color white
    u2net remove photos/ masks/ --mask-only --threshold 0.5 --overwrite
    u2net remove photos/ cutouts/ --format webp --batch-size 8 --providers CUDA,CPU --model best.onnx
    cat photo.jpg | u2net remove - - > cutout.png           # stdin to stdout

Exit status: 0 when everything was processed (or skipped), 1 when some file failed (or the --qa-csv
table could not be written), 2 for usage errors (bad arguments, missing input or model, an output folder
where nothing can be written), 130 after Ctrl-C and 143 after SIGTERM (both stop ``remove`` cleanly).

Each subcommand is one ``Command``: a name, a help line, a function adding its arguments and one
running it (``args -> exit status``); add a new one to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import one_line
from .inference.predictor import BACKENDS
from .inference.runtime import ONNX_PRECISIONS
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
    from .inference.options import parse_color

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
        help="auto: ONNX Runtime for .onnx files (CUDA provider when available), and for a tag whose weights here "
        "are ONNX (the bundled u2netp.duts) where it runs on the device PyTorch would (fp32 on a CPU, or ONNX "
        "Runtime's CUDA), PyTorch otherwise; onnxruntime: always ONNX Runtime; pytorch: always PyTorch (an .onnx "
        "file is imported)",
    )
    model.add_argument("--device", default="auto", help="PyTorch device: auto (CUDA, MPS, CPU), cpu, cuda, cuda:1 ...")
    model.add_argument(
        "--input-size",
        type=_int_in(32),
        metavar="N",
        help="the model's input side, px (default: the one the weights were validated at, usually 320); an ONNX "
        "file exported at a fixed size cannot change it",
    )
    model.add_argument(
        "--providers",
        type=_names,
        metavar="NAME[,NAME...]",
        help="ONNX Runtime execution providers in order of preference, e.g. CUDA,OpenVINO,CPU (those not available "
        "here are passed over); implies --backend onnxruntime with --backend auto",
    )
    model.add_argument(
        "--precision",
        choices=ONNX_PRECISIONS,
        default="fp32",
        help="the model's arithmetic (default fp32). On ONNX Runtime, fp16 and bf16 need --providers OpenVINO "
        "(onnxruntime-openvino): on Intel CPUs with AVX512-FP16 (Xeon Sapphire Rapids and later) fp16 ran U2-Net "
        "about 4x faster than fp32, 0.0015 from it (docs/quality.md). On PyTorch: autocast (bf16 on CPUs, fp16 "
        "on CUDA)",
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _available_providers(names: list[str]) -> list[str]:
    """ONNX Runtime's full names for ``names`` (``CUDA`` or ``CUDAExecutionProvider``, any case), keeping
    those this ONNX Runtime has; a one-line usage error for an unknown name, or when none is available."""
    from .inference.runtime import pick_providers, provider_names

    try:
        full = provider_names(names)
    except ValueError as unknown:
        raise UsageError(f"--providers: unknown ONNX Runtime provider {_shown(unknown.args[0])!r}") from None
    available = pick_providers(full)
    if not available:
        import onnxruntime

        have = ", ".join(onnxruntime.get_available_providers())
        raise UsageError(f"--providers: none of {', '.join(full)} is available in this ONNX Runtime (it has {have})")
    return available


def _add_remove_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference.batch import CPU_BATCH_SIZE, DEFAULT_WORKERS, GPU_BATCH_SIZE

    parser.add_argument("input", help="an image, a folder searched recursively, or - for one image on stdin")
    parser.add_argument(
        "output",
        help="for an image: the output file (.png, .webp, .jpg) or a folder, or - for stdout; for a folder: a folder "
        "mirroring the input tree",
    )
    _add_model_arguments(parser)
    _add_output_arguments(parser)
    _add_mask_arguments(parser)
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--batch-size",
        type=_int_in(1),
        metavar="N",
        help=f"images per model run (default {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} otherwise)",
    )
    speed.add_argument(
        "--workers",
        type=_non_negative,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="threads decoding ahead of the model, and as many encoding and writing behind it (default "
        f"{DEFAULT_WORKERS}; 0: one image after another)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference.batch import OUTPUT_FORMATS
    from .inference.options import RemovalOptions

    defaults = RemovalOptions()  # the library's defaults, not copies of them
    output = parser.add_argument_group("output")
    output.add_argument("--mask-only", action="store_true", help="write the alpha mask (grayscale) only")
    output.add_argument(
        "--format",
        choices=tuple(OUTPUT_FORMATS),
        help="output format (default: a single output file's suffix, else png); webp is lossless unless "
        "--output-quality; jpeg has no transparency: it needs --bg-color, --bg-image or --mask-only",
    )
    output.add_argument("--output-quality", type=_int_in(1, 100), metavar="Q", help="lossy webp or jpeg quality, 1-100")
    output.add_argument(
        "--qa-csv",
        type=Path,
        metavar="FILE",
        help="write each output's confidence (0-1) and QA flags (empty, touches_frame, several_components, "
        "uncertain_band) to this CSV, one row per output: a re-run keeps the rows of outputs it skips as done",
    )
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
    from .inference.options import DEFAULT_QUALITY, QUALITY_PRESETS, VIEWS, RemovalOptions

    defaults = RemovalOptions()
    mask = parser.add_argument_group("mask")
    mask.add_argument(
        "--quality",
        choices=tuple(QUALITY_PRESETS),
        default=DEFAULT_QUALITY,
        help=f"how the mask is made (default {DEFAULT_QUALITY}): fast (one model run, anti-aliased resize as "
        "rembg), balanced (the photo and its mirror image averaged, edges sharpened: two runs), best (four "
        "views, also shifted: four runs), soft (best, then hair, fur and plants matted into soft edges; needs "
        "pymatting; costs hard-edged subjects some edge accuracy); docs/quality.md",
    )
    mask.add_argument(
        "--views",
        type=int,
        choices=VIEWS,
        help="override the preset's test-time views: 1 (the photo), 2 (and its mirror image), 4 (both also "
        "shifted); each costs one model run",
    )
    mask.add_argument(
        "--sharpen",
        type=_positive_float,
        metavar="G",
        help="override the preset's edge sharpening: probabilities through sigmoid(G * logit(p)); 1 leaves them",
    )
    mask.add_argument(
        "--decontaminate",
        action="store_true",
        help="take the old background's colour out of semi-transparent edges (pymatting; like rembg -dc)",
    )
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
    providers = _available_providers(args.providers) if args.providers else None
    backend = "onnxruntime" if providers and args.backend == "auto" else args.backend
    try:
        predictor = Predictor.from_path(
            source,
            args.device,
            precision=args.precision,
            image_size=args.input_size,
            backend=backend,
            providers=providers,
        )
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
    fixed = predictor.backend.fixed_size
    if args.input_size and fixed and fixed != args.input_size:
        raise UsageError(
            f"{model}: this ONNX file's input is fixed at {fixed}x{fixed}, so --input-size {args.input_size} cannot "
            "change it; export the model at that size, or run it with --backend pytorch"
        )
    return BackgroundRemover(predictor)


def _background_image(args: argparse.Namespace):
    """The decoded --bg-image (or ``None``): read once, here, so that a bad file is one usage error, not a
    failure of every image."""
    from .data.io import read_image

    if args.bg_image is None:
        return None
    if not args.bg_image.is_file():
        raise UsageError(f"{_shown(args.bg_image)}: background image not found")
    try:
        return read_image(args.bg_image)
    except Exception as exc:
        problem = _shown(one_line(exc))
        raise UsageError(f"{_shown(args.bg_image)}: cannot read the background image: {problem}") from None


def _removal_options(args: argparse.Namespace):
    from .inference.options import RemovalOptions

    matting = (
        ("--alpha-matting", args.alpha_matting),
        ("--decontaminate", args.decontaminate),
        ("--quality soft", args.quality == "soft"),
    )
    for flag, wanted in matting:
        if wanted and importlib.util.find_spec("pymatting") is None:
            raise UsageError(f"{flag} needs pymatting: pip install -e '.[matting]' in the repository")
    overrides = {name: getattr(args, name) for name in ("views", "sharpen") if getattr(args, name) is not None}
    return RemovalOptions.preset(
        args.quality,
        **overrides,
        decontaminate=args.decontaminate,
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
        bg_image=_background_image(args),
        stretch=args.stretch,
        rembg_compatible=args.rembg_compatible,
    )


def _output_format(args: argparse.Namespace, options):
    """The checked output format: --format, else the output file's suffix, else PNG (stdout: PNG)."""
    from .inference.batch import OutputFormat, format_of_suffix
    from .inference.planning import needs_alpha, output_format_for

    if args.output == "-":
        name = args.format or "png"
    elif args.input == "-":
        name = args.format or format_of_suffix(Path(args.output).suffix) or "png"
    else:
        name = output_format_for(args.input, args.output, args.format)
    if args.output_quality is not None and name == "png":
        raise UsageError("--output-quality applies to webp and jpeg outputs (--format); png is always lossless")
    output_format = OutputFormat(name, args.output_quality)
    if not output_format.has_alpha and needs_alpha(options):
        raise UsageError(
            "JPEG outputs cannot be transparent: add --bg-color (an opaque colour) or --bg-image, or --mask-only; "
            "or choose --format png or webp"
        )
    return output_format


def _check_paths(args: argparse.Namespace, output_format) -> None:
    """Bad input/output combinations, an output folder where nothing can be written and a --qa-csv that
    cannot be kept or written fail here, before the model loads."""
    from .fileio import folder_write_problem
    from .inference.batch import format_of_suffix
    from .inference.planning import plan_outputs

    folder = None  # where outputs are to be written, if any are
    if args.output == "-":
        if Path(args.input).is_dir():
            raise UsageError(f"{_shown(args.input)}: a folder's outputs cannot go to stdout; give an output folder")
    elif args.input == "-":
        if Path(args.output).is_dir() or format_of_suffix(Path(args.output).suffix) != output_format.name:
            raise UsageError(
                f"{_shown(args.output)}: reading stdin, the output is one {output_format.name} file: name it "
                f"'{output_format.suffix}' (or - for stdout)"
            )
        if args.overwrite or not Path(args.output).exists():
            folder = Path(args.output).parent
    else:
        try:
            pairs = plan_outputs(args.input, args.output, format=output_format.name)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(_shown(exc)) from None
        if any(args.overwrite or not output.exists() for _, output in pairs):
            folder = Path(args.output) if Path(args.input).is_dir() else pairs[0][1].parent
    problem = None if folder is None else folder_write_problem(folder)
    if problem:
        raise UsageError(f"output: {_shown(problem)}")
    if args.qa_csv is not None:
        _check_qa_csv(args.qa_csv)


def _check_qa_csv(path: Path) -> None:
    """--qa-csv must be a QA table of ours or a new file, in a folder where it can be written: found out now,
    not after the whole batch."""
    from .fileio import folder_write_problem
    from .inference.qa import read_qa_csv

    try:
        read_qa_csv(path)  # a table of an earlier run is kept and extended; anything else is the user's
    except ValueError as exc:
        raise UsageError(f"--qa-csv {_shown(exc)}") from None
    problem = folder_write_problem(path.parent)
    if problem:
        raise UsageError(f"--qa-csv: {_shown(problem)}")


# Beyond this, stdin is refused rather than read into memory (180 MP photos are far smaller compressed).
MAX_STDIN_BYTES = 256 * 2**20


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while a command runs, so that ``kill`` stops it as Ctrl-C does:
    work under way finishes, temporary files are removed, what was done is reported."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (Python's default for it
    is to die at once, leaving temporary files); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run_remove(args: argparse.Namespace) -> int:
    with _sigterm_as_interrupt():
        return _remove(args)


def _remove(args: argparse.Namespace) -> int:
    from .inference.folder import remove_batch

    if args.input != "-":
        source = Path(args.input)
        if not source.exists():
            raise UsageError(f"{_shown(source)}: no such file or folder")
        if not source.is_file() and not source.is_dir():  # a FIFO listed as a folder would hold "no images"
            raise UsageError(
                f"{_shown(source)}: not a file or folder (a pipe, socket or device); to read a stream, give - and "
                "redirect it: u2net remove - OUTPUT < STREAM"
            )
    try:
        options = _removal_options(args)
        output_format = _output_format(args, options)
    except ValueError as exc:
        raise UsageError(_shown(exc)) from None
    _check_paths(args, output_format)
    remover = _load_remover(args)
    if "-" in (args.input, args.output):
        return _remove_streamed(remover, args, options, output_format)
    try:
        report = remove_batch(
            remover,
            args.input,
            args.output,
            options,
            overwrite=args.overwrite,
            progress=not args.quiet,
            format=output_format.name,
            quality=output_format.quality,
            batch_size=args.batch_size,
            workers=args.workers,
            qa_csv=args.qa_csv,
        )
    except ValueError as exc:  # its checks before any work, as _check_paths' (the files may change meanwhile)
        raise UsageError(_shown(exc)) from None
    return _print_report(report)


def _read_stdin() -> bytes:
    """stdin, up to :data:`MAX_STDIN_BYTES`; an empty or larger input is an :class:`ImageReadError`."""
    from .data.io import ImageReadError

    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if not data:
        raise ImageReadError("-", "empty input")
    if len(data) > MAX_STDIN_BYTES:
        raise ImageReadError(
            "-", f"more than {MAX_STDIN_BYTES // 2**20} MB on stdin; save it to a file and give the file's path"
        )
    return data


def _quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null: Python's own flush at exit would print a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor (a test's buffer)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _remove_streamed(remover, args: argparse.Namespace, options, output_format) -> int:
    """One image from stdin (``-``) or a file, to stdout (``-``) or a file; the summary goes to stderr when
    stdout carries the image. --qa-csv gets its one row (input and output ``-`` for the streams)."""
    from .data.io import ImageReadError, open_image, read_problem
    from .errors import reason
    from .fileio import atomic_write
    from .inference.folder import BatchReport
    from .inference.planning import output_size_problem
    from .inference.qa import assess_mask, save_qa_table

    out = None if args.output == "-" else Path(args.output)
    pair = (Path(args.input), Path(args.output))
    report = BatchReport()
    qualities = {}
    if out is not None and out.exists() and not args.overwrite:
        report.skipped = 1
    else:
        try:
            source = _read_stdin() if args.input == "-" else Path(args.input)
            if not options.crop:  # the output's size is the input's: refuse before the model runs
                with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                    problem = output_size_problem(output_format.name, img.size)
                if problem:
                    raise ImageReadError(args.input, problem)
            image, alpha = remover.cutout(source, options)
            problem = output_size_problem(output_format.name, image.size)
            if problem:
                raise ImageReadError(args.input, problem)
            encoded = io.BytesIO()
            output_format.save(image, encoded)
        except Exception as exc:  # a bad image is a failure, reported like a batch's
            report.failures.append((pair[0], read_problem(exc)))
        else:
            try:
                if out is None:
                    sys.stdout.buffer.write(encoded.getvalue())
                    sys.stdout.buffer.flush()
                else:
                    with atomic_write(out) as f:
                        f.write(encoded.getvalue())
            except OSError as exc:  # a closed pipe, a full disk: one line, not a traceback
                if out is None:
                    _quiet_stdout()
                report.failures.append((pair[0], f"cannot write {'stdout' if out is None else out}: {reason(exc)}"))
            else:
                report.done = 1
                qualities[pair] = assess_mask(alpha)
    if args.qa_csv is not None:
        report.flagged, report.qa_csv_error = save_qa_table(args.qa_csv, [pair], qualities, options)
    return _print_report(report, sys.stderr if out is None else None)


def _print_report(report, stream=None) -> int:
    """Print the summary and the names of what was left out or failed, then (on stderr) a QA table that could
    not be written; the exit status."""
    _say(report.summary(overwrite="--overwrite"), stream)
    for path, reason in report.left_out:
        _say(f"  skipped: {_shown(path)}: {_shown(reason)}", stream)
    for path, reason in report.failures:
        _say(f"  failed: {_shown(path)}: {_shown(reason)}", stream)
    if report.qa_csv_error:
        (stream or sys.stdout).flush()  # the error comes after the summary, also where both streams are one
        _say(f"error: {_shown(report.qa_csv_error)}", sys.stderr)
    return 1 if report.failed or report.qa_csv_error else 0


REMOVE = Command(
    "remove",
    "remove the background of an image or of every image in a folder",
    _add_remove_arguments,
    _run_remove,
    description="Cut out the subject of an image (or of every image under a folder, recursively) and write PNG, "
    "WebP or JPEG files: RGBA cut-outs, masks, or composites on a new background. Folders run in batches, with "
    "decoding and encoding in threads around the model. Existing outputs are skipped unless --overwrite.",
)


# -- u2net mine --------------------------------------------------------------------------------
def _add_mine_arguments(parser: argparse.ArgumentParser) -> None:
    from .inference.mining import RANKINGS

    parser.add_argument("photos", type=Path, help="folder of unlabelled photos")
    parser.add_argument(
        "output",
        type=Path,
        help="folder to write images/, masks/ (the model's masks, to correct) and ranking.csv; nothing in it is "
        "overwritten",
    )
    parser.add_argument("--top", type=_int_in(1), default=50, metavar="N", help="how many photos to write (50)")
    parser.add_argument(
        "--by",
        choices=RANKINGS,
        default="combined",
        help="what ranks the photos: combined (default: band + flip + 0.25 for several regions), band (the share "
        "of unsure pixels), flip (disagreement with the mirror image), entropy, or random (the baseline)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the draw of --by random (0)")
    parser.add_argument("--recursive", action="store_true", help="also rank photos in subfolders")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_model_arguments(parser)


def _run_mine(args: argparse.Namespace) -> int:
    from .inference.mining import mine_folder

    if not args.photos.is_dir():
        raise UsageError(f"{_shown(args.photos)}: not a folder of photos")
    if args.output.exists() and not args.output.is_dir():
        raise UsageError(f"{_shown(args.output)}: exists and is not a folder")
    remover = _load_remover(args)
    try:
        rows = mine_folder(
            remover.predictor,
            args.photos,
            args.output,
            args.top,
            by=args.by,
            seed=args.seed,
            recursive=args.recursive,
            progress=not args.quiet,
            say=lambda line: _say(_shown(line), sys.stderr),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise UsageError(_shown(exc)) from None
    chosen = [row for row in rows if row["image"]]
    _say(
        f"ranked {len(rows)} photo(s) by {args.by}; wrote the {len(chosen)} least sure to {_shown(args.output)} "
        f"(images/, masks/, ranking.csv). Correct the masks, then: python train.py experiment=person "
        f"data.images={_shown(args.output / 'images')} data.masks={_shown(args.output / 'masks')}"
    )
    return 0


MINE = Command(
    "mine",
    "rank unlabelled photos by how unsure the model is, and write the top ones with its masks to correct",
    _add_mine_arguments,
    _run_mine,
    description="Run the model on every photo of a folder (as it is and mirrored), rank the photos by how unsure "
    "it is, and write the top N with the model's masks as editable 8-bit PNGs plus ranking.csv: correct the "
    "masks and train on the folder pair (docs/models/u2netp.person.md has the measured gain over random picks).",
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
    from .models.pretrained import bundled_tags

    _add_model_arguments(parser)
    parser.add_argument(
        "--choices",
        type=_names,
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
    "--upload-timeout": ("upload_timeout_s", _positive_float, "S", "for a request body to arrive, seconds; more: 408"),
}


def _add_limit_arguments(group: argparse._ArgumentGroup) -> None:
    """The limits of :class:`~u2net.serve.ServeSettings`, with its defaults (408, 413, 503 or 504 beyond)."""
    from .serve.settings import ServeSettings  # no FastAPI needed for the defaults

    defaults = ServeSettings()
    for option, (name, kind, metavar, text) in _LIMITS.items():
        default = getattr(defaults, name)
        group.add_argument(option, dest=name, type=kind, default=default, metavar=metavar, help=f"{text} (%(default)s)")


def _run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .models.pretrained import PRETRAINED
        from .serve import ServeSettings, create_app, default_allowed_hosts
        from .serve.service import model_key
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
    choices = [choice for choice in args.choices if choice != str(args.model)]
    for choice in choices:
        if choice not in PRETRAINED and not Path(choice).expanduser().is_file():
            raise UsageError(f"{_shown(choice)}: --choices names no model file or pretrained tag")
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


SERVE = Command(
    "serve",
    "serve a model over HTTP: REST API and a web page",
    _add_serve_arguments,
    _run_serve,
    description="Serve one model with FastAPI: POST /remove-background, /batch-remove-background, "
    "/remove-background/path; GET /health, /model-info; the web page at / and the API docs at /docs.",
)

COMMANDS: list[Command] = [REMOVE, SERVE, MINE]


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


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI's other messages: one line on stderr, without Python's source location."""
    print(f"warning: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``u2net`` with ``argv`` (default: the command line); returns the exit status."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            return args.handler(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during `remove` (Terminated)
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except BrokenPipeError:  # e.g. the summary piped into `head`
        _quiet_stdout()
        print("error: stdout was closed (broken pipe)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
