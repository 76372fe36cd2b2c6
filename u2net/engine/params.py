"""Optimizer parameter groups: a learning-rate factor (or freezing) for the encoder stages."""

from __future__ import annotations

import re

from torch import nn

_ENCODER_STAGE = re.compile(r"stage\d+$")  # stage1 … stage6; the decoder's are stage5d … stage1d


def is_encoder_parameter(name: str) -> bool:
    """Whether a U²-Net parameter name (``stage3.rebnconv1.conv_s1.weight``) belongs to an encoder stage."""
    return bool(_ENCODER_STAGE.fullmatch(name.split(".", 1)[0]))


def param_groups(model: nn.Module, lr: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """Parameter groups for ``torch.optim``: the encoder stages at ``lr · encoder_lr_scale``, the
    rest (decoder stages, side outputs, fusion) at ``lr``.

    ``encoder_lr_scale=0`` freezes the encoder: its parameters stop requiring gradients (so the
    backward pass skips it, which is also faster) and are left out of the optimizer. Its BatchNorm
    statistics still update in train mode unless ``trainer.freeze_bn=true``.
    """
    if encoder_lr_scale < 0:
        raise ValueError(f"encoder_lr_scale must be 0 (frozen) or more, got {encoder_lr_scale}")
    encoder, rest = [], []
    for name, parameter in model.named_parameters():
        (encoder if is_encoder_parameter(name) else rest).append(parameter)
    if not encoder:
        raise ValueError(f"{type(model).__name__} has no encoder stages (stage1, stage2, ...) to scale")
    if encoder_lr_scale == 1:  # one group, as torch.optim builds from model.parameters()
        return [{"params": encoder + rest, "lr": lr, "name": "all"}]
    groups = [{"params": rest, "lr": lr, "name": "decoder"}]
    if encoder_lr_scale == 0:
        for parameter in encoder:
            parameter.requires_grad_(False)
    else:
        groups.insert(0, {"params": encoder, "lr": lr * encoder_lr_scale, "name": "encoder"})
    return groups
