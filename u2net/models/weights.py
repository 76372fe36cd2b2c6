"""Loading weights into a model: official ``.pth`` files, our checkpoints, ONNX U²-Nets, and tags of published weights.

Files are read by :func:`u2net.models.load_checkpoint`; the state-dict helpers live in
:mod:`u2net.models.state_dict`. Building a model from a file alone
(:meth:`Checkpoint.build_model <u2net.models.Checkpoint.build_model>`, :func:`u2net.models.load_model`) needs no
model to start with.
"""

from __future__ import annotations

import os

from torch import nn

from .checkpoint import load_checkpoint, pretrained_cfg_of
from .state_dict import load_state_dict

__all__ = ["load_weights", "read_checkpoint"]


def read_checkpoint(path_or_tag: str | os.PathLike) -> dict:
    """The stored-dict form of :func:`~u2net.models.load_checkpoint` (``Checkpoint.to_dict()``): our checkpoint
    as saved, an official ``.pth`` or ONNX file as its weights (``"model"``) with what the file names."""
    return load_checkpoint(path_or_tag).to_dict()


def load_weights(model: nn.Module, path_or_tag: str | os.PathLike) -> nn.Module:
    """Load an official ``.pth``, one of our checkpoints, an ONNX U²-Net or a pretrained tag into ``model`` (strict)."""
    tag = pretrained_cfg_of(path_or_tag)
    name = getattr(model, "model_name", None)
    if tag is not None and name is not None and tag.architecture != name:  # before any download
        raise ValueError(f"{path_or_tag} holds {tag.architecture} weights; this model is {name}")
    checkpoint = load_checkpoint(path_or_tag)
    load_state_dict(model, checkpoint.model, source=str(path_or_tag))
    # The input size the weights were trained or validated at, where known: the trainer warns when a
    # fine-tuning run resizes to another (a silent 128² fine-tune of 320² weights scores far worse).
    if checkpoint.preprocessing is not None:
        model.weights_input_size = checkpoint.preprocessing.image_size
    return model
