"""Error messages on one line, for reports, logs and JSON answers (layer 0: imports nothing of ours)."""

from __future__ import annotations


def one_line(text: object) -> str:
    """``str(text)`` (an exception's message, say) with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


def reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (``Type`` alone when it has no message)."""
    message = one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
