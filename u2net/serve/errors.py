"""The service's one error type, and the small formatting helpers its messages share."""

from __future__ import annotations

from typing import Any

from ..errors import one_line, reason

MB = 1 << 20


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = headers


def os_reason(exc: OSError) -> str:
    """The system's short reason for an ``OSError`` (never the path it names)."""
    return exc.strerror or (str(exc.args[0]) if exc.args else type(exc).__name__)


def mb(size: int) -> str:
    return f"{size / MB:.2f} MB" if size < 10 * MB else f"{size / MB:.0f} MB"


__all__ = ["MB", "ApiError", "mb", "one_line", "os_reason", "reason"]
