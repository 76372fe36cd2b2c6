"""Weighted F-measure and S-measure of one image, equal to PySODMetrics' ``WeightedFmeasure`` / ``Smeasure``.

Weighted F-measure (Margolin et al., CVPR 2014; PySODMetrics' default β² = 1). With E = |pred - gt|:

* each background pixel takes the error of its nearest foreground pixel (Euclidean feature transform), the result
  is smoothed with MATLAB's ``fspecial('gaussian', 7, 5)`` (zero padding), and a foreground pixel keeps the smaller
  of its error and the smoothed one;
* background errors are weighted by ``2 - exp(log(0.5) / 5 * d)``, d = distance to the foreground;
* R = 1 - mean weighted error on the foreground, P = TPw / (TPw + FPw + eps), Q = (1+β²)RP / (R + β²P + eps).
  A ground truth without foreground scores 0 (PySODMetrics' special case).

How it is fast and still equal: the smoothed error is only ever read on foreground pixels, so the nearest-foreground
error is only needed for background pixels within 3 px (chessboard) of the foreground; their nearest foreground
pixel lies within √18 px and is found by scanning offsets in the order that reproduces scipy's
``distance_transform_edt`` tie-breaking (smallest distance, then smallest column, then smallest row), instead of a
feature transform of the whole image. The distances for the weights come from OpenCV's exact (``DIST_MASK_PRECISE``)
distance transform, whose float32 values are rounded back to the exact integer squared distance.

S-measure (Fan et al., ICCV 2017; α = 0.5): α × object score + (1 - α) × region score, clipped at 0, with
PySODMetrics' special cases (no foreground: 1 - mean(pred); all foreground: mean(pred)). Every mean, variance and
covariance is a 256-term sum over the per-quadrant level histograms of the :class:`PreparedPair`.

Deviation: when the foreground centroid rounds to the last row or column, PySODMetrics splits off an empty quadrant
and returns NaN; here an empty quadrant (whose area weight is 0) contributes 0, so the score stays finite.
"""

from __future__ import annotations

import cv2
import numpy as np

from .pair import EPS, PreparedPair

__all__ = ["s_measure", "weighted_f_measure"]


def _matlab_gauss2d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    # PySODMetrics' matlab_style_gauss2D (fspecial('gaussian', size, sigma)).
    m = (size - 1) / 2
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


_KERNEL = _matlab_gauss2d()
_KERNEL_1D = _KERNEL.sum(axis=0)  # the Gaussian is separable: _KERNEL == outer(_KERNEL_1D, _KERNEL_1D) to 1e-17
_RADIUS = 3  # half-width of the 7×7 kernel
# Offsets (dy, dx) to every pixel within √18 px (the farthest a pixel within chessboard distance 3 of the foreground
# can be from its nearest foreground pixel), sorted so that the first foreground hit is scipy's feature.
_OFFSETS = sorted(
    ((dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx <= 2 * _RADIUS**2),
    key=lambda o: (o[0] ** 2 + o[1] ** 2, o[1], o[0]),
)
_PAD = 4
# Weight of a background pixel at squared distance n: 2 - exp(log(0.5) / 5 * sqrt(n)), the same float operations as
# PySODMetrics. It is exactly 2.0 from n = _N_FAR on. Entry 0 (foreground pixels) is 0 so they drop out of FPw.
_N_FAR = 300**2
_B_LUT = 2 - np.exp(np.log(0.5) / 5 * np.sqrt(np.arange(_N_FAR + 1)))
_B_LUT[0] = 0.0
assert _B_LUT[-1] == 2.0


def weighted_f_measure(pair: PreparedPair, beta2: float = 1.0) -> float:
    """Weighted F-measure of one image (PySODMetrics' ``WeightedFmeasure``, β² = 1 by default)."""
    if pair.n_fg == 0:
        return 0.0
    fg_error = _foreground_error(pair)
    tp_w = pair.n_fg - fg_error
    fp_w = _background_error(pair)
    recall = 1 - fg_error / pair.n_fg
    precision = tp_w / (tp_w + fp_w + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


def _foreground_error(pair: PreparedPair) -> float:
    """Sum over the foreground of min(E, EA): E = |pred - 1|, EA = E with the background filled from the nearest
    foreground pixel, smoothed by the Gaussian. Computed on the foreground's bounding box + 3 px, zero-padded by 4.

    The background is set to 0 in ``e``: EA >= 0, so min(EA, e) is 0 there and a plain sum covers the foreground
    only; background pixels outside the band are never read by the filter at a foreground pixel.
    """
    h, w = pair.shape
    rows, cols = np.flatnonzero(pair.fg_rows), np.flatnonzero(pair.fg_cols)
    y0, y1 = max(rows[0] - _RADIUS, 0), min(rows[-1] + _RADIUS + 1, h)
    x0, x1 = max(cols[0] - _RADIUS, 0), min(cols[-1] + _RADIUS + 1, w)
    gt_c = np.ascontiguousarray(pair.gt[y0:y1, x0:x1]).view(np.uint8)
    # Zero padding: outside the image it is the convolution's own zero padding, inside it is never read.
    e = np.zeros((y1 - y0 + 2 * _PAD, x1 - x0 + 2 * _PAD))
    inner = e[_PAD:-_PAD, _PAD:-_PAD]
    np.copyto(inner, cv2.LUT(pair.pred_u8[y0:y1, x0:x1], np.abs(pair.lut - 1.0)), where=gt_c.view(bool))
    # Background pixels within 3 px (chessboard) of the foreground, inside the image, and their nearest foreground
    # pixel (flat indices into the padded arrays; offsets stay inside the padding).
    band = np.zeros(e.shape, np.uint8)
    band[_PAD:-_PAD, _PAD:-_PAD] = cv2.dilate(gt_c, np.ones((2 * _RADIUS + 1,) * 2, np.uint8)) > gt_c
    is_fg = np.pad(gt_c, _PAD).ravel()
    stride = e.shape[1]
    band_idx = np.flatnonzero(band)
    todo, where = band_idx, np.arange(band_idx.size)
    feature = np.empty_like(band_idx)
    for dy, dx in _OFFSETS:
        if todo.size == 0:
            break
        candidate = todo + (dy * stride + dx)
        hit = is_fg[candidate].view(bool)
        if hit.any():
            feature[where[hit]] = candidate[hit]
            miss = ~hit
            todo, where = todo[miss], where[miss]
    e_t = e.copy()
    e_t.ravel()[band_idx] = e.ravel()[feature]
    # fspecial('gaussian', 7, 5) is separable: same filter up to rounding (1e-17), 3× faster than filter2D.
    ea = cv2.sepFilter2D(e_t, cv2.CV_64F, _KERNEL_1D, _KERNEL_1D, borderType=cv2.BORDER_CONSTANT)
    return float(np.minimum(ea, e, out=ea).sum())


def _background_error(pair: PreparedPair) -> float:
    """Sum over the background of pred * (2 - exp(log(0.5) / 5 * distance to the foreground))."""
    dist = cv2.distanceTransform((~pair.gt).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # float32 distance -> exact integer squared distance (exact below 2^22; beyond _N_FAR the weight is 2 anyway).
    sq = np.minimum(dist * dist, np.float32(_N_FAR))
    sq += np.float32(0.5)
    weights = _B_LUT[sq.astype(np.int32)]  # 0 on the foreground
    return float(np.einsum("ij,ij->", pair.pred, weights))  # einsum: no BLAS threads for one dot product


def _s_object(hist: np.ndarray, values: np.ndarray) -> float:
    # PySODMetrics' s_object on the pixels described by (hist, values): 2μ / (μ² + 1 + σ + eps), σ with ddof=1.
    n = int(hist.sum())
    mean = float(hist @ values) / n
    std = np.sqrt(float(hist @ (values - mean) ** 2) / (n - 1)) if n > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pair: PreparedPair, quadrant: int, rows: slice, cols: slice) -> float:
    """PySODMetrics' ``Smeasure.ssim`` on one quadrant, from its level histograms."""
    fg, bg = pair.quad_hist[quadrant, 1], pair.quad_hist[quadrant, 0]
    n1, n0 = int(fg.sum()), int(bg.sum())
    n = n0 + n1
    if n == 0:
        return 0.0  # empty quadrant (weight 0); PySODMetrics returns NaN here
    lut = pair.lut
    x = float((fg + bg) @ lut) / n
    y = n1 / n
    d = lut - x
    denom = n - 1 + EPS
    sigma_x = float((fg + bg) @ (d * d)) / denom
    sigma_y = ((1 - y) ** 2 * n1 + y**2 * n0) / denom
    sigma_xy = ((1 - y) * float(fg @ d) - y * float(bg @ d)) / denom
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha == 0 and (n1 == 0 or n0 == 0) and np.count_nonzero(fg + bg) == 1:
        # One level and a constant ground truth: alpha is exactly 0 and PySODMetrics' beta is 0 (score 1) or not
        # (score 0) depending on whether np.mean of the constant quadrant returns the constant to the last bit.
        # That is an accident of summation order, so redo PySODMetrics' own arithmetic on the quadrant.
        region = pair.pred[rows, cols]
        sigma_x = np.sum((region - np.mean(region)) ** 2) / denom
        beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def s_measure(pair: PreparedPair, alpha: float = 0.5) -> float:
    """S-measure of one image (PySODMetrics' ``Smeasure``, α = 0.5)."""
    y = pair.n_fg / pair.n_pixels
    mean_pred = float(pair.hist @ pair.lut) / pair.n_pixels
    if y == 0:
        return 1 - mean_pred
    if y == 1:
        return mean_pred
    # object score
    fg_score = _s_object(pair.fg_hist, pair.lut) * y
    bg_score = _s_object(pair.bg_hist, 1 - pair.lut) * (1 - y)
    object_score = fg_score + bg_score
    # region score: SSIM of the four quadrants around the centroid, weighted by their areas
    h, w = pair.shape
    cy, cx = pair.split
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    top, bottom, left, right = slice(0, cy), slice(cy, h), slice(0, cx), slice(cx, w)
    region_score = (
        _ssim(pair, 0, top, left) * w_lt
        + _ssim(pair, 1, top, right) * w_rt
        + _ssim(pair, 2, bottom, left) * w_lb
        + _ssim(pair, 3, bottom, right) * w_rb
    )
    return float(max(0.0, object_score * alpha + region_score * (1 - alpha)))
