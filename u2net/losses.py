"""Deep-supervision losses for U²-Net, computed on logits.

The model returns ``(fused, side1, ..., side6)`` logits, each N×1×H×W. The original recipe
(Qin et al., 2020) sums a binary cross-entropy over all seven outputs with weight 1;
``kind="hybrid"`` adds the BASNet (Qin et al., 2019) soft-IoU and SSIM terms.

Every loss takes logits (or probabilities, for :func:`ssim`) of any floating dtype and works in
float32 with autocast disabled: under bf16/fp16 autocast the sigmoid, the log terms and the SSIM
variances (differences of nearly equal means) lose too much precision in half precision.
Non-finite values are not handled here; the trainer checks the loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LOSS_KINDS", "DeepSupervisionLoss", "bce_with_logits", "soft_iou_loss", "ssim"]

LOSS_KINDS: tuple[str, ...] = ("bce", "hybrid")

# SSIM constants for data in [0, 1] (Wang et al., 2004): C1 = (0.01 L)², C2 = (0.03 L)², L = 1.
_SSIM_SIGMA = 1.5
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2
# Added to both the intersection and the union of the soft IoU so that an all-zero prediction of
# an empty target is 0/0-safe. As in BASNet, an empty target has IoU 0 with any prediction that is
# not exactly zero: its IoU loss is ~1 with no gradient, and only BCE/SSIM learn from such images.
_IOU_EPS = 1e-6


def _no_autocast(t: Tensor) -> contextlib.AbstractContextManager:
    """Context that turns autocast off for ``t``'s device type, so ops stay in float32."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # device type without autocast support: nothing to turn off
        return contextlib.nullcontext()


def _check_pair(x: Tensor, target: Tensor, what: str) -> None:
    if x.shape != target.shape:
        raise ValueError(f"{what} shape {tuple(x.shape)} and target shape {tuple(target.shape)} differ")
    if x.dim() != 4:
        raise ValueError(f"expected N×C×H×W tensors, got {what} with shape {tuple(x.shape)}")


def bce_with_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy averaged over all pixels.

    Args:
        logits: N×C×H×W raw scores (any float dtype; computed in float32).
        target: N×C×H×W values in [0, 1] (soft labels allowed).

    Returns:
        Scalar float32 tensor; equals ``nn.BCELoss()(sigmoid(logits), target)`` but uses the
        log-sum-exp form, which stays finite for large logits where ``log(sigmoid)`` underflows.
    """
    _check_pair(logits, target, "logits")
    with _no_autocast(logits):
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def soft_iou_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BASNet soft IoU loss ``1 - sum(p*t) / sum(p + t - p*t)`` with ``p = sigmoid(logits)``.

    The sums run over each image (C×H×W), and the per-image losses are averaged over the batch,
    so a small object in one image is not swamped by a large one in another.

    Args:
        logits: N×C×H×W raw scores (any float dtype; computed in float32).
        target: N×C×H×W values in [0, 1].

    Returns:
        Scalar float32 tensor in [0, 1].
    """
    _check_pair(logits, target, "logits")
    with _no_autocast(logits):
        p = torch.sigmoid(logits.float())
        t = target.float()
        inter = (p * t).flatten(1).sum(1)  # N
        union = (p + t - p * t).flatten(1).sum(1)  # N
        return (1.0 - (inter + _IOU_EPS) / (union + _IOU_EPS)).mean()


def _blur_matrix(size: int, window: int, device: torch.device) -> Tensor:
    """``size``×``size`` banded matrix of the normalised 1-D Gaussian (sigma 1.5) of ``window`` taps.

    ``B @ z`` blurs the rows of ``z`` with zero padding; the matrix is symmetric, so ``z @ B``
    blurs its columns. A dense product is ~8× faster than an 11×11 convolution of one channel on
    CPU (BLAS instead of a grouped convolution) and gives the same map to float32 rounding.
    """
    coords = torch.arange(window, dtype=torch.float32, device=device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    g = g / g.sum()
    offset = torch.arange(size, device=device)[None, :] - torch.arange(size, device=device)[:, None]
    inside = offset.abs() <= window // 2
    return torch.where(inside, g[(offset + window // 2).clamp(0, window - 1)], torch.zeros((), device=device))


def _ssim_map(x: Tensor, y: Tensor, window: int = 11) -> Tensor:
    """Per-pixel SSIM, N×C×H×W float32 (zero padding at the borders, as in BASNet's pytorch_ssim)."""
    _check_pair(x, y, "probs")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd integer, got {window}")
    with _no_autocast(x):
        x, y = x.float(), y.float()
        rows, cols = _blur_matrix(x.shape[-2], window, x.device), _blur_matrix(x.shape[-1], window, x.device)
        # The 2-D Gaussian is separable: blur along H, then along W, all five maps in one product.
        blurred = rows @ torch.stack([x, y, x * x, y * y, x * y]) @ cols
        mu_x, mu_y, mean_xx, mean_yy, mean_xy = blurred.unbind(0)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        var_x, var_y, cov_xy = mean_xx - mu_xx, mean_yy - mu_yy, mean_xy - mu_xy
        num = (2 * mu_xy + _SSIM_C1) * (2 * cov_xy + _SSIM_C2)
        den = (mu_xx + mu_yy + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
        return num / den


def ssim(probs: Tensor, target: Tensor, window: int = 11) -> Tensor:
    """Mean structural similarity with a ``window``×``window`` Gaussian window (sigma 1.5).

    Args:
        probs: N×C×H×W values in [0, 1] (probabilities, not logits).
        target: N×C×H×W values in [0, 1].
        window: odd window size; padding is ``window // 2`` so the map keeps H×W.

    Returns:
        Scalar float32 tensor: SSIM averaged per image, then over the batch (1 for identical inputs).
    """
    return _ssim_map(probs, target, window).flatten(1).mean(1).mean()


class DeepSupervisionLoss(nn.Module):
    """Sum over outputs of weight_i * loss(output_i, target) — the original U²-Net recipe is BCE with all weights 1.

    Args:
        kind: ``"bce"`` (per output BCE) or ``"hybrid"`` (per output
            ``bce_weight*BCE + iou_weight*IoU + ssim_weight*(1 - SSIM)``, as in BASNet).
        weights: one weight per output, in the model's order ``(fused, side1, ..., side6)``;
            ``None`` means 1.0 for every output (any number of outputs).
        bce_weight, iou_weight, ssim_weight: term weights, used only by ``"hybrid"``.
        ssim_window: SSIM Gaussian window size (odd).
    """

    def __init__(
        self,
        kind: str = "bce",
        weights: Sequence[float] | None = None,
        bce_weight: float = 1.0,
        iou_weight: float = 1.0,
        ssim_weight: float = 1.0,
        ssim_window: int = 11,
    ) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss kind {kind!r}; options: {', '.join(LOSS_KINDS)}")
        if int(ssim_window) < 1 or int(ssim_window) % 2 == 0:
            raise ValueError(f"ssim_window must be a positive odd integer, got {ssim_window}")
        self.kind = kind
        # float() per item: Hydra passes ListConfig / ints, which we store as plain floats.
        self.weights: tuple[float, ...] | None = None if weights is None else tuple(float(w) for w in weights)
        self.bce_weight = float(bce_weight)
        self.iou_weight = float(iou_weight)
        self.ssim_weight = float(ssim_weight)
        self.ssim_window = int(ssim_window)

    def extra_repr(self) -> str:
        s = f"kind={self.kind!r}, weights={self.weights}"
        if self.kind == "hybrid":
            s += f", bce_weight={self.bce_weight}, iou_weight={self.iou_weight}, ssim_weight={self.ssim_weight}"
            s += f", ssim_window={self.ssim_window}"
        return s

    def output_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Unweighted loss of one output: logits and target N×1×H×W -> scalar float32."""
        if self.kind == "bce":
            return bce_with_logits(logits, target)
        loss = self.bce_weight * bce_with_logits(logits, target)
        # Zero-weight terms are skipped: SSIM costs five blurred maps per output.
        if self.iou_weight != 0.0:
            loss = loss + self.iou_weight * soft_iou_loss(logits, target)
        if self.ssim_weight != 0.0:
            with _no_autocast(logits):
                probs = torch.sigmoid(logits.float())
            loss = loss + self.ssim_weight * (1.0 - ssim(probs, target, self.ssim_window))
        return loss

    def forward(self, outputs: Sequence[Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (total scalar loss, per-output losses as a 1-D tensor of len(outputs), unweighted).

        Args:
            outputs: logits ``(fused, side1, ..., side6)``, each N×1×H×W; a bare tensor counts as
                one output (iterating it would silently split the batch instead).
            target: N×1×H×W in [0, 1].

        Returns:
            ``total``: float32 scalar with gradient. ``per_output``: float32 tensor of shape
            ``(len(outputs),)``, detached (it is for logging, and must not keep the graph alive).
        """
        if isinstance(outputs, Tensor):
            outputs = (outputs,)
        if len(outputs) == 0:
            raise ValueError("DeepSupervisionLoss got no outputs")
        weights = self.weights if self.weights is not None else (1.0,) * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(
                f"DeepSupervisionLoss has {len(weights)} weights but the model returned {len(outputs)} outputs"
            )
        losses = [self.output_loss(o, target) for o in outputs]
        total = sum((w * loss for w, loss in zip(weights, losses)), start=losses[0].new_zeros(()))
        return total, torch.stack([loss.detach() for loss in losses])
