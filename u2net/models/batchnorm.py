"""BatchNorm for weights whose BatchNorm was folded into the convolutions (every rembg ONNX file).

Importing such a file leaves each BatchNorm as the identity (weight 1, bias 0, running mean 0,
running variance ``1 - eps``) and the convolutions carrying the folded per-channel scales, from
about 1e-3 to 5. Two things then go wrong when training: train-mode BatchNorm normalises each
channel by its batch statistics, which is another function than the one the weights compute, and
Adam's per-parameter steps (about ``lr`` whatever a weight's size) wreck the small channels.

:func:`restore_batchnorm` undoes the fold from data. For each convolution followed by an identity
BatchNorm it measures the per-channel mean ``μ`` and standard deviation ``σ`` of the convolution's
output over calibration images, divides the convolution's weight and bias by ``σ`` and sets the
BatchNorm to weight ``σ``, bias ``μ``, running mean ``μ / σ`` and running variance ``1 - eps``.
The eval-mode function is unchanged (up to float rounding), and on data like the calibration
images a train-mode BatchNorm sees mean ≈ ``μ / σ`` and variance ≈ 1, so it computes about the
same function too; the convolutions' weights are back to comparable scales.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["conv_bn_pairs", "folded_batchnorms", "restore_batchnorm"]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.modules.batchnorm._BatchNorm]]:
    """Every (convolution, BatchNorm) pair where the BatchNorm directly follows the convolution:
    the ``conv_s1`` / ``bn_s1`` of each ``REBNCONV`` (found by structure, not by name)."""
    pairs = []
    for module in model.modules():
        children = list(module.children())
        for first, second in zip(children, children[1:]):
            # _BatchNorm: SyncBatchNorm too (trainer.sync_batchnorm converts before restoring)
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.modules.batchnorm._BatchNorm):
                pairs.append((first, second))
    return pairs


def _is_identity(bn: nn.BatchNorm2d, atol: float = 1e-6) -> bool:
    # Tight enough to tell a folded import (running variance 1 - eps) from a freshly initialised
    # BatchNorm (running variance 1), which must be left alone.
    if bn.running_mean is None or bn.running_var is None:
        return False

    def near(t: torch.Tensor, value: float) -> bool:
        return bool(torch.allclose(t, torch.full_like(t, value), rtol=0.0, atol=atol))

    return (
        near(bn.weight, 1.0)
        and near(bn.bias, 0.0)
        and near(bn.running_mean, 0.0)
        and near(bn.running_var + bn.eps, 1.0)
    )


def folded_batchnorms(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (convolution, BatchNorm) pairs whose BatchNorm is the identity (folded weights)."""
    return [(conv, bn) for conv, bn in conv_bn_pairs(model) if _is_identity(bn)]


class _ChannelMoments:
    """Running per-channel sum and sum of squares of a convolution's output, in float64."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, None, None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # noqa: ARG002
        values = output.detach().double().transpose(0, 1).flatten(1)  # C × (N·H·W)
        total, squares = values.sum(1), (values * values).sum(1)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += values.shape[1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        var = (self.squares / self.count - mean * mean).clamp_min(0.0)  # biased, as train-mode BatchNorm
        return mean, var.sqrt()


@torch.no_grad()
def restore_batchnorm(model: nn.Module, images: Iterable[torch.Tensor], min_std: float = 1e-4) -> int:
    """Restore the folded BatchNorms of ``model`` from calibration batches (each N×3×H×W, already
    preprocessed as for training) and return how many were restored (0 when none is folded).

    All layers are measured in one pass over ``images`` in eval mode (each layer sees the same
    inputs it sees in the unchanged eval-mode network, so the order does not matter). Channels with
    ``σ < min_std`` (constant outputs) keep a divisor of ``min_std``: still exact in eval mode.
    """
    pairs = folded_batchnorms(model)
    if not pairs:
        return 0
    was_training = model.training
    model.eval()
    moments = [_ChannelMoments() for _ in pairs]
    hooks = [conv.register_forward_hook(m) for (conv, _), m in zip(pairs, moments)]
    try:
        device = next(model.parameters()).device
        seen = 0
        for batch in images:
            model(batch.to(device=device, dtype=torch.float32))
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
    if seen == 0:
        raise ValueError("restore_batchnorm needs at least one calibration batch")
    for (conv, bn), moment in zip(pairs, moments):
        mean, std = moment.mean_std()
        std = std.clamp_min(min_std)
        shape = (-1,) + (1,) * (conv.weight.dim() - 1)
        conv.weight.copy_((conv.weight.double() / std.view(shape)).to(conv.weight.dtype))
        if conv.bias is not None:
            conv.bias.copy_((conv.bias.double() / std).to(conv.bias.dtype))
        bn.weight.copy_(std.to(bn.weight.dtype))
        bn.bias.copy_(mean.to(bn.bias.dtype))
        bn.running_mean.copy_((mean / std).to(bn.running_mean.dtype))
        bn.running_var.fill_(1.0 - bn.eps)
    model.train(was_training)
    return len(pairs)
