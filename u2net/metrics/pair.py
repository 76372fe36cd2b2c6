"""One (prediction, ground truth) image pair reduced, in one pass, to what every metric needs.

Conventions (PySODMetrics' ``prepare_data``, itself MATLAB's ``mapminmax(im2double(pred))``): the prediction is a
uint8 map divided by 255 and min-max normalised per image (a constant map is left at ``pred / 255``), the ground
truth is ``gt > 128``.

Why this is fast: a uint8 prediction has at most 256 distinct levels and the normalisation maps each level on its own,
so one histogram of (quadrant, gt, level) keys plus a 256-entry look-up table of normalised values gives
everything the threshold-based metrics (MAE, F, E, IoU, Dice) and the S-measure need, without building the H×W float
image. The table is computed with the very same float operations as PySODMetrics, so the per-pixel values, the
histogram bins and hence the curves are bit-identical; sums over pixels are taken in another order (differences of
~1e-16). Metrics that need the spatial layout (weighted F, boundary metrics) use ``pair.gt`` and ``pair.pred``, the
latter built lazily and once.
"""

from __future__ import annotations

from functools import cached_property

import cv2
import numpy as np

__all__ = ["EPS", "N_LEVELS", "PreparedPair", "prepare_pair"]

N_LEVELS = 256  # uint8 levels = PySODMetrics' 256 thresholds
EPS = np.spacing(1)  # PySODMetrics' (and MATLAB's) eps, 2.22e-16
_LEVELS = np.arange(N_LEVELS) / 255  # im2double of every uint8 level; bit-identical to ``uint8_array / 255``


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

    This is the literal (full-image) reference path; :class:`PreparedPair` uses the equivalent look-up table.
    """
    _check_pair(pred, gt)
    gt_bool = gt > 128
    pred_f = pred / 255
    # A constant map cannot be stretched: PySODMetrics keeps it as pred/255 (so all-128 stays ~0.502, not 0 or 1).
    if pred_f.max() != pred_f.min():
        pred_f = (pred_f - pred_f.min()) / (pred_f.max() - pred_f.min())
    return pred_f, gt_bool


class PreparedPair:
    """One image pair reduced to what the metrics need; build with :meth:`from_uint8`.

    Attributes:
        pred_u8, gt_u8: the H×W uint8 inputs, as given.
        gt: H×W bool ground truth (``gt_u8 > 128``).
        lut: (256,) float64, ``lut[v]`` = normalised value of uint8 level ``v``.
        quad_hist: (4, 2, 256) int64 pixel counts by S-measure quadrant (top-left, top-right, bottom-left,
            bottom-right of the split at :attr:`split`), ground truth (0 = background, 1 = foreground) and level.
        fg_hist, bg_hist: (256,) int64 counts of each level inside / outside the ground truth (all quadrants), so
            any per-pixel sum is a 256-term dot product.
        split: (row, col) where the S-measure splits the image: PySODMetrics' rounded foreground centroid + 1
            (image centre + 1 without foreground); rows ``< row`` are the top quadrants, columns ``< col`` the left.
        fg_rows, fg_cols: foreground pixel count of each row / column.
    """

    def __init__(self, pred_u8: np.ndarray, gt_u8: np.ndarray) -> None:
        _check_pair(pred_u8, gt_u8)
        self.pred_u8, self.gt_u8 = pred_u8, gt_u8
        h, w = pred_u8.shape
        self.shape = (h, w)
        self.n_pixels = h * w
        gt = gt_u8 > 128
        self.gt = gt
        gt_view = gt.view(np.uint8)
        self.fg_rows = cv2.reduce(gt_view, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
        self.fg_cols = cv2.reduce(gt_view, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
        self.n_fg = int(self.fg_rows.sum())
        if self.n_fg:
            # == np.argwhere(gt).mean(axis=0).round(): the index sums are exact integers, np.mean divides them once
            # and np.round rounds halves to even.
            cy = np.round(int(self.fg_rows @ np.arange(h)) / self.n_fg)
            cx = np.round(int(self.fg_cols @ np.arange(w)) / self.n_fg)
        else:
            cy, cx = np.round(h / 2), np.round(w / 2)
        self.split = (int(cy) + 1, int(cx) + 1)  # PySODMetrics' "+1 for MATLAB's 1:X" convention
        # One histogram of key = bottom << 10 | right << 9 | fg << 8 | level.
        key = np.left_shift(gt_view, 8, dtype=np.uint16)
        key |= pred_u8
        key[self.split[0] :] |= 1 << 10
        key[:, self.split[1] :] |= 1 << 9
        n_keys = 8 * N_LEVELS
        if self.n_pixels < 2**24:  # calcHist counts in float32: exact below 2^24, and ~4× faster than bincount
            hist = cv2.calcHist([key], [0], None, [n_keys], [0, n_keys]).ravel().astype(np.int64)
        else:
            hist = np.bincount(key.ravel(), minlength=n_keys)
        self.quad_hist = hist.reshape(4, 2, N_LEVELS)
        self.bg_hist, self.fg_hist = self.quad_hist.sum(axis=0)
        present = np.flatnonzero(self.bg_hist + self.fg_hist)
        lo, hi = _LEVELS[present[0]], _LEVELS[present[-1]]
        # Same float operations, in the same order, as prepare_pair -> bit-identical per-pixel values.
        self.lut = (_LEVELS - lo) / (hi - lo) if hi != lo else _LEVELS.copy()

    @classmethod
    def from_uint8(cls, pred: np.ndarray, gt: np.ndarray) -> PreparedPair:
        """Validate and reduce a uint8 H×W (pred, gt) pair."""
        return cls(pred, gt)

    @property
    def hist(self) -> np.ndarray:
        """(256,) pixel count of each level."""
        return self.fg_hist + self.bg_hist

    @cached_property
    def pred(self) -> np.ndarray:
        """Full H×W float64 normalised prediction (equal to ``prepare_pair(...)[0]``), built on first use."""
        return cv2.LUT(self.pred_u8, self.lut)  # == self.lut[self.pred_u8], bit for bit, ~2× faster

    @cached_property
    def pred_binary(self) -> np.ndarray:
        """H×W bool ``pred > 0.5`` (normalised prediction; PySODMetrics' binary / "argmax" convention)."""
        table = (self.lut > 0.5).astype(np.uint8)
        return cv2.LUT(self.pred_u8, table).view(bool)
