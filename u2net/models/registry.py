"""A timm-style model registry: ``create_model(name, **kwargs)`` and ``list_models()``, and the built-in
architectures registered in it (``u2net``, ``u2netp``).

The built-ins are defined here, not beside ``create_model``, so that whichever module reads the registry first
(a checkpoint being rebuilt, an ONNX file imported) finds them: ``u2net.models`` imports its submodules lazily."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable

from torch import nn

from .u2net import U2NET_STAGES, U2NETP_STAGES, U2Net

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


def _build(name: str, default_stages: dict, stages: dict | None, in_ch: int, out_ch: int) -> U2Net:
    table = stages
    if table is None:  # the published table, with the first stage taking in_ch channels (e.g. RGB-D)
        table = copy.deepcopy(default_stages)
        height, _, mid, out, dilated = table["encoder"][0]
        table["encoder"][0] = (height, in_ch, mid, out, dilated)
    model = U2Net(table, in_ch=in_ch, out_ch=out_ch)
    model.model_name = name
    # What create_model needs to rebuild this exact model; stored in checkpoints.
    model.model_args = {"in_ch": in_ch, "out_ch": out_ch}
    if stages is not None:
        model.model_args["stages"] = model.stages
    return model


@register_model
def u2net(stages: dict | None = None, in_ch: int = 3, out_ch: int = 1) -> U2Net:
    """U²-Net (full): 44.0 M parameters, about 117 GFLOP at 320×320."""
    return _build("u2net", U2NET_STAGES, stages, in_ch, out_ch)


@register_model
def u2netp(stages: dict | None = None, in_ch: int = 3, out_ch: int = 1) -> U2Net:
    """U²-Net† (lite, ``u2netp``): 1.13 M parameters, about 39.5 GFLOP at 320×320."""
    return _build("u2netp", U2NETP_STAGES, stages, in_ch, out_ch)
