"""Pixel-wise metrics of one image, from the level histograms of a :class:`PreparedPair` (no H×W pass).

Every function reproduces PySODMetrics (``sod_metrics.py`` / ``fmeasurev2.py``, v1.4-1.6) on the same pair:

* MAE: mean |pred - gt|.
* Curves over 256 thresholds (F-measure, precision, recall, E-measure, IoU, Dice): PySODMetrics bins
  ``(pred * 255).astype(uint8)`` and counts the pixels ``>=`` each bin; entry ``i`` is threshold ``255 - i`` (high
  threshold first). A threshold that predicts no pixel has precision 0; an image without foreground has recall 0.
* Adaptive threshold: ``min(2 * mean(pred), 1)``, pixels ``>=`` it are foreground (F and E).
* IoU and Dice "at 0.5": PySODMetrics' ``FmeasureV2`` binary mode, ``pred > 0.5`` (strictly greater) on the
  normalised prediction. A zero denominator gives 0 (PySODMetrics' ``divide``): IoU and Dice of an empty
  prediction on an empty ground truth are 0, not 1.
"""

from __future__ import annotations

import numpy as np

from .pair import EPS, N_LEVELS, PreparedPair

__all__ = [
    "ThresholdCounts",
    "adaptive_counts",
    "adaptive_em",
    "adaptive_f",
    "binary_iou_dice",
    "dice_curve",
    "e_curve",
    "f_curve",
    "iou_curve",
    "mae",
]

_TIE_TOL = 1e-9  # far above the ~1e-13 summation error of a mean over an image, far below the 1/255 level spacing


def mae(pair: PreparedPair) -> float:
    """Mean absolute error between the normalised prediction and the binary ground truth."""
    # |pred - 0| on background pixels, |pred - 1| on foreground ones (same expression PySODMetrics evaluates).
    return float((pair.bg_hist @ pair.lut + pair.fg_hist @ np.abs(pair.lut - 1.0)) / pair.n_pixels)


class ThresholdCounts:
    """True / false positives at PySODMetrics' 256 thresholds (entry i: threshold 255 - i) and the totals."""

    def __init__(self, pair: PreparedPair):
        # PySODMetrics bins (pred * 255).astype(uint8) with edges 0..256, i.e. bin = truncated value; the bin of a
        # level depends only on the level, so re-bin the level histogram (the bin map is monotonic, no pixel is lost).
        bins = (pair.lut * 255).astype(np.uint8)
        fg = np.bincount(bins, weights=pair.fg_hist, minlength=N_LEVELS).astype(np.int64)
        bg = np.bincount(bins, weights=pair.bg_hist, minlength=N_LEVELS).astype(np.int64)
        # Pixels >= each threshold, from 255 down to 0, as PySODMetrics' flip + cumsum.
        self.tp = np.cumsum(fg[::-1])
        self.fp = np.cumsum(bg[::-1])
        self.n_fg = pair.n_fg
        self.n_pixels = pair.n_pixels


def f_curve(c: ThresholdCounts, beta2: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F) curves, as PySODMetrics' ``Fmeasure.cal_pr``."""
    ps = c.tp + c.fp
    ps[ps == 0] = 1  # nothing predicted at this threshold -> TP is 0 too, so precision 0 (PySODMetrics' choice)
    precision = c.tp / ps
    recall = c.tp / max(c.n_fg, 1)  # empty gt -> recall 0 everywhere
    numerator = (1 + beta2) * precision * recall
    f = numerator / np.where(numerator == 0, 1, beta2 * precision + recall)
    return precision, recall, f


def _enhanced_sum(tp, fp, n_fg: int, n_pixels: int):
    """Sum of the enhanced-alignment matrix for binary predictions with ``tp`` / ``fp`` pixels (scalars or arrays).

    Literally PySODMetrics' ``Emeasure`` arithmetic: four pixel classes (pred fg/bg × gt fg/bg) each carry one
    alignment value, so the H×W matrix is never built. The special cases are PySODMetrics' too.
    """
    pred_fg = tp + fp
    pred_bg = n_pixels - pred_fg
    if n_fg == 0:
        return pred_bg
    if n_fg == n_pixels:
        return pred_fg
    fn = n_fg - tp
    tn = pred_bg - fn
    mean_pred = pred_fg / n_pixels
    mean_gt = n_fg / n_pixels
    dp_fg, dp_bg = 1 - mean_pred, 0 - mean_pred
    dg_fg, dg_bg = 1 - mean_gt, 0 - mean_gt
    total = 0
    for part, a, b in ((tp, dp_fg, dg_fg), (fp, dp_fg, dg_bg), (fn, dp_bg, dg_fg), (tn, dp_bg, dg_bg)):
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * part
    return total


def e_curve(c: ThresholdCounts) -> np.ndarray:
    """E-measure at the 256 thresholds, as PySODMetrics' ``Emeasure.cal_em_with_cumsumhistogram``.

    Note PySODMetrics divides by ``H*W - 1 + eps`` (so a 1-pixel image scores ~4.5e15); kept for equality.
    """
    return _enhanced_sum(c.tp, c.fp, c.n_fg, c.n_pixels) / (c.n_pixels - 1 + EPS)


def iou_curve(c: ThresholdCounts) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) at the 256 thresholds (PySODMetrics' ``IOUHandler``, 0 where undefined)."""
    return _divide(c.tp, c.tp + c.fp + (c.n_fg - c.tp))


def dice_curve(c: ThresholdCounts) -> np.ndarray:
    """Dice = 2TP / (2TP + FP + FN) at the 256 thresholds (PySODMetrics' ``DICEHandler``, 0 where undefined)."""
    return _divide(2 * c.tp, c.tp + (c.n_fg - c.tp) + c.tp + c.fp)


def _divide(numerator, denominator) -> np.ndarray:
    # PySODMetrics' _BaseHandler.divide: a zero denominator gives 0.
    out = np.array(denominator, dtype=np.float64)
    np.divide(numerator, out, out=out, where=out != 0)
    return out


def adaptive_counts(pair: PreparedPair) -> tuple[int, int]:
    """(TP, FP) at the adaptive threshold ``min(2 * mean(pred), 1)``, pixels ``>=`` it predicted foreground."""
    hist = pair.hist
    raw = 2 * float(pair.lut @ hist) / pair.n_pixels
    present = pair.lut[hist > 0]
    if raw > 1 + _TIE_TOL:
        thr = 1.0  # clipped: exact whichever way the mean is summed
    elif np.any(np.abs(present - raw) <= _TIE_TOL):
        # A level sits on the threshold (e.g. eleven 0s, one 85, two 255s: 2*mean == 85/255): ``>=`` then hinges on
        # the last bit of the mean, so take it exactly as PySODMetrics does, from the full image with np.mean.
        thr = min(2 * pair.pred.mean(), 1)
    else:
        thr = min(raw, 1.0)
    above = pair.lut >= thr
    return int(pair.fg_hist[above].sum()), int(pair.bg_hist[above].sum())


def adaptive_f(pair: PreparedPair, tp: int, fp: int, beta2: float) -> float:
    """F at the adaptive threshold, as PySODMetrics' ``Fmeasure.cal_adaptive_fm``."""
    if tp == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall = tp / pair.n_fg
    return float((1 + beta2) * precision * recall / (beta2 * precision + recall))


def adaptive_em(pair: PreparedPair, tp: int, fp: int) -> float:
    """E-measure at the adaptive threshold, as PySODMetrics' ``Emeasure.cal_adaptive_em``."""
    return float(_enhanced_sum(tp, fp, pair.n_fg, pair.n_pixels) / (pair.n_pixels - 1 + EPS))


def binary_iou_dice(pair: PreparedPair) -> tuple[float, float]:
    """IoU and Dice of ``pred > 0.5`` (PySODMetrics' ``FmeasureV2`` binary mode, sample-based)."""
    above = pair.lut > 0.5
    tp = int(pair.fg_hist[above].sum())
    fp = int(pair.bg_hist[above].sum())
    fn = pair.n_fg - tp
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return float(iou), float(dice)
