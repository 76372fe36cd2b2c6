"""Is low precision safe for these weights? Compare one batch's gradient with the fp32 one.

bf16 keeps 8 bits of mantissa. That is plenty for most networks, but not for the published U²-Net†:
one decoder layer (``stage2d.rebnconv1d``) reads a near-constant channel of about 228 and cancels it
against other channels, so in bf16 its output is off by more than its own size (relative error 1.2)
and the gradient of every layer above it is noise. Measured on the bundled weights, 3 batches of 8
ECSSD images at 320²: cosine similarity 0.28, 0.75 and -0.23 between the bf16 and fp32 gradients.
Fine-tuned in bf16 the model then plateaus where fp32 keeps improving. Randomly initialised weights
agree to about 0.99, so low precision stays the fast default where it is safe.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..device import autocast_context

__all__ = ["MIN_GRADIENT_AGREEMENT", "gradient_agreement"]

# Below this cosine similarity with the fp32 gradient, training in low precision follows another
# gradient than the model's: precision=auto then trains in fp32.
MIN_GRADIENT_AGREEMENT = 0.9


def _gradient(
    model: nn.Module, loss_fn: Callable, images: torch.Tensor, masks: torch.Tensor, precision: str
) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with autocast_context(images.device, precision):
        outputs = model(images)
    total, _ = loss_fn(outputs, masks)
    # fp16 gradients can underflow without scaling; the cosine does not depend on the scale.
    (total * (2.0**12 if precision == "fp16" else 1.0)).backward()
    grads = [p.grad.flatten().double() for p in model.parameters() if p.grad is not None]
    if not grads:
        raise ValueError("gradient_agreement: no parameter of the model requires a gradient")
    return torch.cat(grads)


def gradient_agreement(
    model: nn.Module, loss_fn: Callable, images: torch.Tensor, masks: torch.Tensor, precision: str
) -> float:
    """Cosine similarity (1 = the same direction) between the gradients of ``loss_fn`` on one batch
    (``images`` N×3×H×W, ``masks`` N×1×H×W on the model's device) under ``precision`` autocast and
    in fp32, over every parameter that requires a gradient.

    The model's train/eval modes are used as they are; its buffers (BatchNorm statistics that a
    train-mode forward would update) and gradients are left as they were found.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        reference = _gradient(model, loss_fn, images, masks, "fp32")
        low = _gradient(model, loss_fn, images, masks, precision)
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
        model.zero_grad(set_to_none=True)
    denominator = reference.norm() * low.norm()
    if denominator == 0:
        return 1.0 if reference.norm() == low.norm() else 0.0
    return float(reference @ low / denominator)
