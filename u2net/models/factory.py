"""``create_model`` (a registered architecture, optionally with weights) and ``load_model`` (a model rebuilt from a
file alone)."""

from __future__ import annotations

import os

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .registry import model_factory, u2net, u2netp  # noqa: F401  (the built-in factories, still importable here)
from .weights import load_weights


def create_model(name: str, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a registered model; ``weights`` loads a file (official ``.pth`` or our checkpoint)
    or a pretrained tag such as ``"u2net.duts"`` (downloaded into the cache on first use).

    Extra keyword arguments go to the factory (``stages``, ``in_ch``, ``out_ch``).
    """
    model = model_factory(name)(**kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_model(path_or_tag: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a file alone: our checkpoints name their model and arguments; for an
    official ``.pth`` the architecture is inferred from the weights. Returns the model in eval mode.

    ``load_checkpoint(path_or_tag).build_model(map_location)``; see :class:`u2net.models.Checkpoint`.
    """
    return load_checkpoint(path_or_tag).build_model(map_location)
