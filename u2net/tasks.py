"""What the entry scripts share around their task: one-line errors for the user's mistakes.

In the style of lightning-hydra-template's ``task_wrapper``, without importing Hydra (nothing in the package
does): Hydra's exceptions are recognised by class name and attributes (``InstantiationException`` wraps the
error raised while building an object in ``__cause__``; ``MissingMandatoryValue`` names its ``full_key``).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from .engine import NonFiniteLossError
from .models import WeightsDownloadError

# Problems with the user's input (data, weights files, options) or machine; DatasetCheckError is a ValueError.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError, WeightsDownloadError)

R = TypeVar("R")


def _is(exc: BaseException, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(exc).__mro__)


def unwrap(exc: BaseException) -> BaseException:
    """The error Hydra's ``InstantiationException`` wraps (through any number of wrappers), else ``exc``."""
    while _is(exc, "InstantiationException") and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def missing_key(exc: BaseException) -> str | None:
    """The key of a required ``???`` value that ``exc`` (OmegaConf's ``MissingMandatoryValue``) is about."""
    exc = unwrap(exc)
    if not _is(exc, "MissingMandatoryValue"):
        return None
    return getattr(exc, "full_key", None) or None


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing cause of ``exc``, or ``None`` for a bug (which keeps its traceback)."""
    key = missing_key(exc)
    if key:  # e.g. data.images of data=folder
        return ValueError(f"{key} is required: add {key}=... to the command line")
    exc = unwrap(exc)
    return exc if isinstance(exc, USER_ERRORS) else None


def task_wrapper(task: Callable[..., R]) -> Callable[..., R]:
    """``task`` such that a user error ends the program with one line ``error: ...`` (``HYDRA_FULL_ERROR=1``:
    the traceback instead); anything else propagates. Wrap the task, not the ``@hydra.main`` function: Hydra
    finds the config folder from that function's file."""

    @functools.wraps(task)
    def wrapped(*args, **kwargs) -> R:
        try:
            return task(*args, **kwargs)
        except Exception as exc:
            cause = user_error(exc)
            if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            sys.exit(f"error: {cause}")

    return wrapped
