"""MAE and F-measure for salient-object detection, computed exactly as PySODMetrics does, but faster.

Conventions (PySODMetrics' ``prepare_data``, itself MATLAB's ``mapminmax(im2double(pred))``): the prediction is a
uint8 map divided by 255 and min-max normalised per image (a constant map is left at ``pred / 255``), the ground
truth is ``gt > 128``.

Why it is faster: a uint8 prediction has at most 256 distinct levels and the normalisation maps each level on its own,
so one ``np.bincount`` of (gt, level) pairs plus a 256-entry look-up table of normalised values gives everything MAE and
F-measure need, without building the H×W float image. The table is computed with the very same float operations
as PySODMetrics, so the per-pixel values, the histogram bins and hence the PR curves are bit-identical; MAE and the
mean used by the adaptive threshold are sums in another order (differences of ~1e-16).

Extending: a new metric gets the per-image :class:`PreparedPair` (``pair.pred`` / ``pair.gt`` give the full float
and bool images, built lazily and once, for metrics that need the spatial layout: S-, E-measure, weighted F ...),
computes its per-image score and keeps a running sum in :class:`SaliencyMetrics`, whose ``results()`` averages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

__all__ = ["PreparedPair", "SaliencyMetrics", "evaluate_batch", "prepare_pair", "probabilities_to_uint8"]

N_LEVELS = 256  # uint8 levels = PySODMetrics' 256 thresholds
_LEVELS = np.arange(N_LEVELS) / 255  # im2double of every uint8 level; bit-identical to ``uint8_array / 255``
_TIE_TOL = 1e-9  # far above the ~1e-13 summation error of a mean over an image, far below the 1/255 level spacing


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    for name, arr in (("pred", pred), ("gt", gt)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2:
            desc = f"{type(arr).__name__} {getattr(arr, 'dtype', '')} {getattr(arr, 'shape', '')}"
            raise TypeError(f"{name} must be a uint8 H×W numpy array (0..255), got {desc}")
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape} vs gt {gt.shape}")
    if pred.size == 0:
        raise ValueError(f"empty image {pred.shape}")


def prepare_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 H×W pred and gt -> (float64 pred in [0,1] min-max normalised, bool gt) exactly like PySODMetrics.

    This is the literal (full-image) reference path; :class:`SaliencyMetrics` uses the equivalent look-up table.
    """
    _check_pair(pred, gt)
    gt_bool = gt > 128
    pred_f = pred / 255
    # A constant map cannot be stretched: PySODMetrics keeps it as pred/255 (so all-128 stays ~0.502, not 0 or 1).
    if pred_f.max() != pred_f.min():
        pred_f = (pred_f - pred_f.min()) / (pred_f.max() - pred_f.min())
    return pred_f, gt_bool


@dataclass
class PreparedPair:
    """One image pair reduced to what the metrics need; build with :meth:`from_uint8`.

    ``lut[v]`` is the normalised value of uint8 level ``v`` and ``fg_hist`` / ``bg_hist`` count the pixels of each
    level inside / outside the ground truth, so any per-pixel sum is a 256-term dot product.
    """

    pred_u8: np.ndarray  # H×W uint8, as given
    gt_u8: np.ndarray  # H×W uint8, as given
    lut: np.ndarray  # (256,) float64
    fg_hist: np.ndarray  # (256,) int64
    bg_hist: np.ndarray  # (256,) int64
    n_pixels: int = field(init=False)
    n_fg: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_pixels = int(self.pred_u8.size)
        self.n_fg = int(self.fg_hist.sum())

    @classmethod
    def from_uint8(cls, pred: np.ndarray, gt: np.ndarray) -> PreparedPair:
        _check_pair(pred, gt)
        # One bincount over key = (gt > 128) << 8 | level: bg levels land in 0..255, fg levels in 256..511.
        key = (gt > 128).view(np.uint8).astype(np.uint16) << 8
        key |= pred
        hist = np.bincount(key.ravel(), minlength=2 * N_LEVELS)
        bg_hist, fg_hist = hist[:N_LEVELS], hist[N_LEVELS:]
        present = np.flatnonzero(bg_hist + fg_hist)
        lo, hi = _LEVELS[present[0]], _LEVELS[present[-1]]
        # Same float operations, in the same order, as prepare_pair -> bit-identical per-pixel values.
        lut = (_LEVELS - lo) / (hi - lo) if hi != lo else _LEVELS.copy()
        return cls(pred, gt, lut, fg_hist, bg_hist)

    @cached_property
    def pred(self) -> np.ndarray:
        """Full H×W float64 normalised prediction (equal to ``prepare_pair(...)[0]``), built on first use."""
        return self.lut[self.pred_u8]

    @cached_property
    def gt(self) -> np.ndarray:
        """Full H×W bool ground truth (``gt > 128``), built on first use."""
        return self.gt_u8 > 128


def _mae(pair: PreparedPair) -> float:
    # |pred - 0| on background pixels, |pred - 1| on foreground ones (same expression PySODMetrics evaluates).
    return float((pair.bg_hist @ pair.lut + pair.fg_hist @ np.abs(pair.lut - 1.0)) / pair.n_pixels)


def _pr_curve(pair: PreparedPair, beta2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F at the 256 thresholds, index i = threshold 255 - i (PySODMetrics' ``cal_pr`` order)."""
    # PySODMetrics bins (pred * 255).astype(uint8) with edges 0..256, i.e. bin = truncated value; the bin of a
    # level depends only on the level, so re-bin the level histogram (the bin map is monotonic, no pixel is lost).
    bins = (pair.lut * 255).astype(np.uint8)
    fg = np.bincount(bins, weights=pair.fg_hist, minlength=N_LEVELS).astype(np.int64)
    bg = np.bincount(bins, weights=pair.bg_hist, minlength=N_LEVELS).astype(np.int64)
    # Pixels >= each threshold, from 255 down to 0, as PySODMetrics' flip + cumsum.
    tps = np.cumsum(fg[::-1])
    ps = tps + np.cumsum(bg[::-1])
    ps[ps == 0] = 1  # nothing predicted at this threshold -> TP is 0 too, so precision 0 (PySODMetrics' choice)
    precision = tps / ps
    recall = tps / max(pair.n_fg, 1)  # empty gt -> recall 0 everywhere
    numerator = (1 + beta2) * precision * recall
    f = numerator / np.where(numerator == 0, 1, beta2 * precision + recall)
    return precision, recall, f


def _adaptive_f(pair: PreparedPair, beta2: float) -> float:
    """F at threshold min(2 * mean(pred), 1), as PySODMetrics' ``cal_adaptive_fm``."""
    raw = 2 * float(pair.lut @ (pair.fg_hist + pair.bg_hist)) / pair.n_pixels
    present = pair.lut[(pair.fg_hist + pair.bg_hist) > 0]
    if raw > 1 + _TIE_TOL:
        thr = 1.0  # clipped: exact whichever way the mean is summed
    elif np.any(np.abs(present - raw) <= _TIE_TOL):
        # A level sits on the threshold (e.g. eleven 0s, one 85, two 255s: 2*mean == 85/255): ``>=`` then hinges on
        # the last bit of the mean, so take it exactly as PySODMetrics does, from the full image with np.mean.
        thr = min(2 * pair.pred.mean(), 1)
    else:
        thr = min(raw, 1.0)
    above = pair.lut >= thr
    intersection = int(pair.fg_hist[above].sum())
    if intersection == 0:
        return 0.0
    precision = intersection / int((pair.fg_hist + pair.bg_hist)[above].sum())
    recall = intersection / pair.n_fg
    return float((1 + beta2) * precision * recall / (beta2 * precision + recall))


class SaliencyMetrics:
    """Streaming MAE and F-measure (β²=0.3): max, mean and adaptive F over 256 thresholds, plus the PR curve.

    Call :meth:`update` once per image and :meth:`results` once per dataset; dataset scores follow PySODMetrics:
    MAE and adaptive F are means over images, the precision / recall / F curves are averaged over images first and
    max F / mean F are the max / mean of the averaged F curve.
    """

    def __init__(self, beta2: float = 0.3):
        self.beta2 = beta2  # PySODMetrics calls this ``beta`` but uses it as β²
        self.reset()

    def reset(self) -> None:
        """Forget all images."""
        self.n_images = 0
        self._mae_sum = 0.0
        self._adp_f_sum = 0.0
        self._precision_sum = np.zeros(N_LEVELS)
        self._recall_sum = np.zeros(N_LEVELS)
        self._f_sum = np.zeros(N_LEVELS)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """pred, gt: uint8 H×W arrays of equal shape. Returns this image's own scores {"mae","max_f","adp_f"} (for
        per-image reports)."""
        pair = PreparedPair.from_uint8(pred, gt)
        mae = _mae(pair)
        precision, recall, f = _pr_curve(pair, self.beta2)
        adp_f = _adaptive_f(pair, self.beta2)
        # Only running sums are kept: memory stays O(256) however large the dataset.
        self.n_images += 1
        self._mae_sum += mae
        self._adp_f_sum += adp_f
        self._precision_sum += precision
        self._recall_sum += recall
        self._f_sum += f
        return {"mae": mae, "max_f": float(f.max()), "adp_f": adp_f}

    def results(self) -> dict:
        """{"n_images", "mae", "max_f", "mean_f", "adp_f", "precision" (256,), "recall" (256,), "f_curve" (256,)}

        Curves are indexed like PySODMetrics': entry i is threshold 255 - i (high threshold first).
        """
        if self.n_images == 0:
            raise RuntimeError("SaliencyMetrics.results() called before any update()")
        n = self.n_images
        f_curve = self._f_sum / n
        return {
            "n_images": n,
            "mae": self._mae_sum / n,
            "max_f": float(f_curve.max()),
            "mean_f": float(f_curve.mean()),
            "adp_f": self._adp_f_sum / n,
            "precision": self._precision_sum / n,
            "recall": self._recall_sum / n,
            "f_curve": f_curve,
        }


def probabilities_to_uint8(prob: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float probabilities in [0,1] (H×W, any float dtype) -> uint8 H×W, rounding like saving a PNG (np.round(p*255)).

    Works elementwise, so any shape is accepted (``evaluate_batch`` converts a whole batch at once). The product is
    taken in float64 whatever the input dtype, so the result does not depend on fp16/bf16/fp32; np.round rounds
    halves to even. Non-finite values or values outside [0, 1] (e.g. logits passed by mistake) raise ValueError.
    """
    if isinstance(prob, torch.Tensor):
        if not prob.is_floating_point():
            raise TypeError(f"expected a float tensor, got {prob.dtype}")
        arr = prob.detach().cpu().to(torch.float64).numpy()  # via torch: numpy has no bfloat16
    else:
        arr = np.asarray(prob)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"expected a float array, got {arr.dtype}")
        arr = arr.astype(np.float64)
    if arr.size and not (np.isfinite(arr).all() and arr.min() >= -1e-6 and arr.max() <= 1 + 1e-6):
        raise ValueError("probabilities must be finite and in [0, 1] (apply sigmoid to logits first)")
    # clip only absorbs the tolerated float overshoot (1.0000001 * 255 rounds to 255 anyway, -0 to 0).
    return np.clip(np.round(arr * 255), 0, 255).astype(np.uint8)


def evaluate_batch(metrics: SaliencyMetrics, probs: torch.Tensor, targets: torch.Tensor) -> list[dict[str, float]]:
    """Update ``metrics`` with a validation batch; returns the per-image scores.

    probs: N×1×H×W probabilities in [0,1] (after sigmoid); targets: N×1×H×W masks in [0,1], both quantised with
    :func:`probabilities_to_uint8`, as if saved to and read back from PNG (so gt -> ``round(t*255) > 128``).
    """
    if probs.ndim != 4 or probs.shape[1] != 1 or probs.shape != targets.shape:
        raise ValueError(
            f"expected N×1×H×W probs and targets of equal shape, got {tuple(probs.shape)} and {tuple(targets.shape)}"
        )
    # One device->host copy per tensor, then per-image updates.
    preds_u8 = probabilities_to_uint8(probs)[:, 0]
    gts_u8 = probabilities_to_uint8(targets)[:, 0]
    return [metrics.update(p, g) for p, g in zip(preds_u8, gts_u8)]
