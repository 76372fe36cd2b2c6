"""Error messages on one line, for reports, logs and JSON answers, and the error of a missing extra (layer 0:
imports nothing of ours)."""

from __future__ import annotations

import importlib.util
import sys


def one_line(text: object) -> str:
    """``str(text)`` (an exception's message, say) with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (``Type`` alone when it has no message)."""
    message = one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class MissingExtraError(ImportError, RuntimeError):
    """A part of u2net needs an optional dependency that is not installed; the message names the extra that brings
    it. An ImportError, as the import that failed; a RuntimeError too, so that the callers that report a model
    that cannot be loaded (a RuntimeError) on one line (``u2net remove``, ``u2net serve``) show it so."""


def require_extra(purpose: str, extra: str, **modules: str) -> None:
    """Raise :class:`MissingExtraError` (:func:`extra_hint`'s line) unless
    every one of ``modules`` (import name = the name shown to the user) is installed. Nothing is imported."""
    missing = {name: shown for name, shown in modules.items() if importlib.util.find_spec(name) is None}
    if missing:
        raise MissingExtraError(extra_hint(purpose, extra, *missing.values()), name=next(iter(missing)))


def extra_hint(purpose: str, extra: str, *names: str) -> str:
    """ "``purpose`` needs A and B: pip install 'u2net[extra]' (from a checkout: pip install -e '.[extra]')"."""
    *most, last = names
    needed = f"{', '.join(most)} and {last}" if most else last
    return f"{purpose} needs {needed}: pip install 'u2net[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def script_requires(purpose: str, extra: str, **modules: str) -> None:
    """:func:`require_extra` for an entry script, before it imports what it needs: exits with the one line
    ``error: ...`` (status 1) instead of the traceback of a failed import."""
    try:
        require_extra(purpose, extra, **modules)
    except MissingExtraError as exc:
        sys.exit(f"error: {exc}")
