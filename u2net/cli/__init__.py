"""The ``u2net`` command.

    u2net remove photo.jpg cutout.png                      # RGBA cut-out with the bundled U²-Net† (offline)
    u2net remove photos/ cutouts/ --model best.onnx --crop --bg-color white
    u2net remove photos/ masks/ --mask-only --threshold 0.5 --overwrite
    u2net remove photos/ cutouts/ --format webp --batch-size 8 --providers CUDA,CPU --model best.onnx
    cat photo.jpg | u2net remove - - > cutout.png           # stdin to stdout

Exit status: 0 when everything was processed (or skipped), 1 when some file failed (or the --qa-csv
table could not be written), 2 for usage errors (bad arguments, missing input or model, an output folder
where nothing can be written), 130 after Ctrl-C and 143 after SIGTERM (both stop ``remove`` cleanly).

Each subcommand is one module here with one ``COMMAND`` (:class:`~u2net.cli.common.Command`: a name, a help
line, a function adding its arguments and one running it, ``args -> exit status``): ``remove``, ``serve``,
``mine``; add a new one to ``COMMANDS``. What they share (usage errors, safe printing, the model's arguments and
loading) is in ``common``; the removal options' flags are generated in ``options``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence

from ..errors import one_line
from . import mine, remove, serve
from .common import Command, UsageError, quiet_stdout
from .remove import Terminated

COMMANDS: list[Command] = [remove.COMMAND, serve.COMMAND, mine.COMMAND]


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    from .. import __version__

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
        quiet_stdout()
        print("error: stdout was closed (broken pipe)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
