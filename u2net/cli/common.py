"""What the subcommands share: usage errors, printing names safely, argument types, and the model arguments
and loading of every command that runs a model."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import one_line
from ..inference.options import OptionSpec
from ..inference.predictor import BACKENDS, PRECISIONS
from ..models.pretrained import DEFAULT_MODEL


class UsageError(Exception):
    """Bad input from the user: reported as one ``error: ...`` line, exit status 2."""


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, a help line, a function adding its arguments and one running it
    (``args -> exit status``)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


def shown(text: object) -> str:
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


def say(line: str, stream=None) -> None:
    """Print ``line``; what the stream's encoding cannot hold is written as backslash escapes, so a
    strict ASCII or Latin-1 stdout never raises."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    print(line.encode(encoding, "backslashreplace").decode(encoding, "replace"), file=stream)


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    return number_in(OptionSpec("value", int, "", low=low, high=high))


def number_in(spec: OptionSpec) -> Callable[[str], int | float]:
    """An argparse type: a number of ``spec``'s type within its bounds, refused with the bounds' text."""

    def parse(text: str) -> int | float:
        try:
            value = spec.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if spec.type is int else 'a number'}: {text!r}"
            ) from None
        if spec.problem(value):
            raise argparse.ArgumentTypeError(f"a value {spec.bounds_text()} expected, got {text}")
        return value

    return parse


def positive_float(text: str) -> float:
    return number_in(OptionSpec("value", float, "", low=0, open_low=True))(text)


def names(text: str) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
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
        type=int_in(32),
        metavar="N",
        help="the model's input side, px (default: the one the weights were validated at, usually 320); an ONNX "
        "file exported at a fixed size cannot change it",
    )
    model.add_argument(
        "--providers",
        type=names,
        metavar="NAME[,NAME...]",
        help="ONNX Runtime execution providers in order of preference, e.g. CUDA,OpenVINO,CPU (those not available "
        "here are passed over); implies --backend onnxruntime with --backend auto",
    )
    model.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the model's arithmetic. auto (default): on a CPU, the int8 file the bundled models ship (as good as "
        "rembg's masks or better, at less of its time: docs/quality.md), but fp32 on x86 CPUs without VNNI (their "
        "int8 arithmetic saturates: docs/performance.md), else fp32; fp32: the float file; int8: the "
        "bundled int8 file. On ONNX Runtime, fp16 and bf16 need --providers OpenVINO "
        "(onnxruntime-openvino): on Intel CPUs with AVX512-FP16 (Xeon Sapphire Rapids and later) fp16 ran U2-Net "
        "about 4x faster than fp32, 0.0015 from it (docs/quality.md). On PyTorch: autocast (bf16 on CPUs, fp16 "
        "on CUDA)",
    )


def available_providers(wanted: list[str]) -> list[str]:
    """ONNX Runtime's full names for ``wanted`` (``CUDA`` or ``CUDAExecutionProvider``, any case), keeping
    those this ONNX Runtime has; a one-line usage error for an unknown name, or when none is available."""
    from ..inference.runtime import pick_providers, provider_names

    try:
        full = provider_names(wanted)
    except ValueError as unknown:
        raise UsageError(f"--providers: unknown ONNX Runtime provider {shown(unknown.args[0])!r}") from None
    available = pick_providers(full)
    if not available:
        import onnxruntime

        have = ", ".join(onnxruntime.get_available_providers())
        raise UsageError(f"--providers: none of {', '.join(full)} is available in this ONNX Runtime (it has {have})")
    return available


def load_remover(args: argparse.Namespace):
    from ..inference import BackgroundRemover, Predictor
    from ..models.pretrained import PRETRAINED, WeightsDownloadError

    model = str(args.model)
    if model not in PRETRAINED and not Path(model).expanduser().exists():
        raise UsageError(f"{model}: model file not found (give --model a checkpoint, .pth, .onnx or pretrained tag)")
    source = model if model in PRETRAINED else Path(model).expanduser()
    providers = available_providers(args.providers) if args.providers else None
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
    return BackgroundRemover(predictor)


def quiet_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null: Python's own flush at exit would print a traceback."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no file descriptor (a test's buffer)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
