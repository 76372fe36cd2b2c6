"""A timm-style model registry: ``create_model(name, **kwargs)`` and ``list_models()``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a factory under its function name."""
    name = fn.__name__
    if name in _MODEL_FACTORIES:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_FACTORIES[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered architectures matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _MODEL_FACTORIES if fnmatch.fnmatch(name, pattern))


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered architecture."""
    return name in _MODEL_FACTORIES


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered under ``name``; a clear error lists the known names otherwise."""
    try:
        return _MODEL_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
