"""``u2net remove``: cut out the subject of an image, a folder of them, or a stream.

The flags of the removal options are generated from their one declaration
(:data:`~u2net.inference.options.OPTION_SPECS`); the job is checked by the library
(:func:`~u2net.inference.planning.plan_job`) before the model loads, and its errors get the flag to change here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import extra_hint
from ..inference.batch import CPU_BATCH_SIZE, DEFAULT_WORKERS, GPU_BATCH_SIZE, OUTPUT_FORMATS
from ..inference.options import RemovalOptions, front_end_specs, missing_pymatting, options_from
from . import common
from .common import Command, UsageError, int_in, quiet_stdout, say, shown
from .options import add_option_arguments, option_values

# Beyond this, stdin is refused rather than read into memory (180 MP photos are far smaller compressed).
MAX_STDIN_BYTES = 256 * 2**20

# The flag to change for each field of a JobError (plan_job's parameters); None: the message names the path.
JOB_FLAGS = {
    "paths": None,
    "output": "output",
    "format": "--format",
    "quality": "--output-quality",
    "qa_csv": "--qa-csv",
}
JPEG_REMEDY = "add --bg-color (an opaque colour) or --bg-image, or --mask-only; or choose --format png or webp"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="an image, a folder searched recursively, or - for one image on stdin")
    parser.add_argument(
        "output",
        help="for an image: the output file (.png, .webp, .jpg) or a folder, or - for stdout; for a folder: a folder "
        "mirroring the input tree",
    )
    common.add_model_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "--format",
        choices=tuple(OUTPUT_FORMATS),
        help="output format (default: a single output file's suffix, else png); webp is lossless unless "
        "--output-quality; jpeg has no transparency: it needs --bg-color, --bg-image or --mask-only",
    )
    output.add_argument("--output-quality", type=int_in(1, 100), metavar="Q", help="lossy webp or jpeg quality, 1-100")
    output.add_argument(
        "--qa-csv",
        type=Path,
        metavar="FILE",
        help="write each output's confidence (0-1) and QA flags (empty, touches_frame, several_components, "
        "uncertain_band) to this CSV, one row per output: a re-run keeps the rows of outputs it skips as done",
    )
    output.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    add_option_arguments(parser.add_argument_group("removal options"), front_end_specs("cli"))
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--batch-size",
        type=int_in(1),
        metavar="N",
        help=f"images per model run (default {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} otherwise)",
    )
    speed.add_argument(
        "--workers",
        type=int_in(0),
        default=DEFAULT_WORKERS,
        metavar="N",
        help="threads decoding ahead of the model, and as many encoding and writing behind it (default "
        f"{DEFAULT_WORKERS}; 0: one image after another)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    with _sigterm_as_interrupt():
        return _remove(args)


def _remove(args: argparse.Namespace) -> int:
    from ..inference.folder import run_job

    options = removal_options(args)
    streamed = "-" in (args.input, args.output)
    job = None if streamed else _plan(args, options)
    output_format, previous_qa = _plan_stream(args, options) if streamed else (job.output_format, None)
    remover = common.load_remover(args)
    if streamed:
        return _remove_streamed(remover, args, options, output_format, previous_qa)
    report = run_job(remover, job, progress=not args.quiet, batch_size=args.batch_size, workers=args.workers)
    return print_report(report)


def removal_options(args: argparse.Namespace) -> RemovalOptions:
    """The options of the command line (the preset, then the flags given); one usage error for a bad one."""
    try:
        options = options_from(option_values(args, front_end_specs("cli")))
    except ValueError as exc:
        raise UsageError(shown(exc)) from None
    needing = missing_pymatting(options)
    if needing:
        flags = " and ".join(_flag(name) + (f" {value}" if value else "") for name, value in needing)
        raise UsageError(extra_hint(flags, "matting", "pymatting"))
    return options


def _flag(name: str) -> str:
    return next(spec.cli_flag for spec in front_end_specs("cli") if spec.name == name)


def _job_error(exc) -> UsageError:
    """A :class:`~u2net.inference.planning.JobError` as a usage error naming the flag to change."""
    if exc.field == "format":  # the one format error: the outputs need transparency, and JPEG has none
        return UsageError(f"JPEG outputs cannot be transparent: {JPEG_REMEDY}")
    flag = JOB_FLAGS.get(exc.field)
    return UsageError(f"{flag + ': ' if flag else ''}{shown(exc)}")


def _plan(args: argparse.Namespace, options: RemovalOptions):
    """The library's plan of a job on files (a ``plan_job``), or a usage error naming the flag to change."""
    from ..inference.planning import JobError, plan_job

    try:
        return plan_job(
            args.input,
            args.output,
            options,
            format=args.format,
            quality=args.output_quality,
            overwrite=args.overwrite,
            qa_csv=args.qa_csv,
        )
    except JobError as exc:
        raise _job_error(exc) from None


def _plan_stream(args: argparse.Namespace, options: RemovalOptions) -> tuple:
    """(the checked output format, the rows of the --qa-csv table to keep) of a job on stdin or stdout (PNG unless
    --format or the output file's suffix says otherwise), its paths and QA table checked as :func:`plan_job` checks
    a file's."""
    from ..fileio import folder_write_problem
    from ..inference.batch import format_of_suffix
    from ..inference.planning import JobError, check_format, check_qa_table, check_source

    named = None if args.output == "-" else format_of_suffix(Path(args.output).suffix)
    previous_qa = None
    try:
        if args.input != "-":
            check_source(args.input)
        output_format = check_format(args.format or named or "png", args.output_quality, options)
        if args.qa_csv is not None:
            previous_qa = check_qa_table(args.qa_csv)  # read once: the run extends these rows
    except JobError as exc:
        raise _job_error(exc) from None
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(shown(exc)) from None
    if args.output == "-":
        if Path(args.input).is_dir():
            raise UsageError(f"{shown(args.input)}: a folder's outputs cannot go to stdout; give an output folder")
        return output_format, previous_qa
    if Path(args.output).is_dir() or named != output_format.name:
        raise UsageError(
            f"{shown(args.output)}: reading stdin, the output is one {output_format.name} file: name it "
            f"'{output_format.suffix}' (or - for stdout)"
        )
    problem = (args.overwrite or not Path(args.output).exists()) and folder_write_problem(Path(args.output).parent)
    if problem:
        raise UsageError(f"output: {shown(problem)}")
    return output_format, previous_qa


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


def _read_stdin() -> bytes:
    """stdin, up to :data:`MAX_STDIN_BYTES`; an empty or larger input is an :class:`ImageReadError`."""
    from ..data.io import ImageReadError

    data = sys.stdin.buffer.read(MAX_STDIN_BYTES + 1)
    if not data:
        raise ImageReadError("-", "empty input")
    if len(data) > MAX_STDIN_BYTES:
        raise ImageReadError(
            "-", f"more than {MAX_STDIN_BYTES // 2**20} MB on stdin; save it to a file and give the file's path"
        )
    return data


def _remove_streamed(remover, args: argparse.Namespace, options, output_format, previous_qa) -> int:
    """One image from stdin (``-``) or a file, to stdout (``-``) or a file; the summary goes to stderr when
    stdout carries the image. --qa-csv gets its one row (input and output ``-`` for the streams), after
    ``previous_qa``, the table's rows as :func:`_plan_stream` read them."""
    from ..data.io import ImageReadError, open_image, read_problem
    from ..errors import reason
    from ..fileio import atomic_write
    from ..inference.folder import BatchReport
    from ..inference.planning import output_size_problem
    from ..inference.qa import assess_mask, save_qa_table

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
                    quiet_stdout()
                report.failures.append((pair[0], f"cannot write {'stdout' if out is None else out}: {reason(exc)}"))
            else:
                report.done = 1
                qualities[pair] = assess_mask(alpha)
    if args.qa_csv is not None:
        report.flagged, report.qa_csv_error = save_qa_table(args.qa_csv, [pair], qualities, options, previous_qa)
    return print_report(report, sys.stderr if out is None else None)


def print_report(report, stream=None) -> int:
    """Print the summary and the names of what was left out or failed, then (on stderr) a QA table that could
    not be written; the exit status."""
    say(report.summary(overwrite="--overwrite"), stream)
    for path, reason in report.left_out:
        say(f"  skipped: {shown(path)}: {shown(reason)}", stream)
    for path, reason in report.failures:
        say(f"  failed: {shown(path)}: {shown(reason)}", stream)
    if report.qa_csv_error:
        (stream or sys.stdout).flush()  # the error comes after the summary, also where both streams are one
        say(f"error: {shown(report.qa_csv_error)}", sys.stderr)
    return 1 if report.failed or report.qa_csv_error else 0


COMMAND = Command(
    "remove",
    "remove the background of an image or of every image in a folder",
    add_arguments,
    run,
    description="Cut out the subject of an image (or of every image under a folder, recursively) and write PNG, "
    "WebP or JPEG files: RGBA cut-outs, masks, or composites on a new background. Folders run in batches, with "
    "decoding and encoding in threads around the model. Existing outputs are skipped unless --overwrite.",
)
