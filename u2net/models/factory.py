"""Registered U²-Net architectures, ``create_model`` and ``load_model`` (a model rebuilt from a file alone)."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .registry import model_factory, register_model
from .u2net import U2NET_STAGES, U2NETP_STAGES, U2Net
from .weights import load_weights


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
