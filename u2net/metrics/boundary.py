"""Boundary accuracy of one binary prediction: relaxed boundary F-measure and Boundary IoU.

Both take binary H×W masks (bool, or uint8 0/1). :class:`~u2net.metrics.SaliencyMetrics` binarises the normalised
prediction with ``pred > 0.5`` (strictly greater: PySODMetrics' binary convention, the same mask as IoU / Dice at 0.5)
and the ground truth with ``gt > 128``.

Relaxed boundary F-measure (BASNet, Qin et al. CVPR 2019; also reported in the U²-Net paper):

* boundary of a mask M = M XOR erode(M, 3×3 square): the mask pixels with a background 8-neighbour. Pixels outside
  the image count as foreground here, so the image border itself is not a boundary (an object cut by the frame has
  no boundary along the frame);
* relaxed precision = fraction of predicted-boundary pixels within ρ = 3 px (Euclidean, i.e. inside a disk of
  radius 3 around some pixel) of the ground-truth boundary; relaxed recall = the same with the roles swapped;
* relaxF = (1 + β²) P R / (β² P + R), β² = 0.3 (0 when P = R = 0), per image; the dataset score is the mean.
* Empty cases: a boundary is empty exactly when its mask is empty or covers the whole image. Exactly one boundary
  empty -> 0. Both empty -> 1 when the two masks agree (both empty, or both the whole image: nothing to find, nothing
  found), 0 when one is empty and the other full.

Boundary IoU (Cheng et al., CVPR 2021, reference ``boundary_iou.utils.boundary_utils.mask_to_boundary``):

* band of a mask M = the pixels of M within d px (chessboard) of a background pixel, where the image is padded with
  background (so, unlike above, an object cut by the frame has a band along it): M minus its d-fold 3×3 erosion;
* d = max(1, round(0.02 × image diagonal)) (Python's ``round``: halves to even);
* Boundary IoU = |band(G) ∩ band(P)| / |band(G) ∪ band(P)|.
* Empty cases: the bands are empty exactly when the masks are. Both empty -> 1; exactly one empty -> 0 (the formula).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

__all__ = ["band_width", "boundary", "boundary_band", "boundary_iou", "relaxed_boundary_f"]

_SQUARE3 = np.ones((3, 3), np.uint8)


@lru_cache(maxsize=8)
def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _as_u8(mask: np.ndarray) -> np.ndarray:
    mask = np.ascontiguousarray(mask)
    if mask.dtype == bool:
        return mask.view(np.uint8)
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise TypeError(f"expected a bool or uint8 0/1 H×W mask, got {mask.dtype} {mask.shape}")
    return mask


def boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary ``M XOR erode(M, 3×3)`` as uint8 0/1 (the image border is not a boundary)."""
    m = _as_u8(mask)
    # cv2.erode's default border value is +inf: pixels outside the image act as foreground.
    return m ^ cv2.erode(m, _SQUARE3)


def relaxed_boundary_f(pred: np.ndarray, gt: np.ndarray, rho: int = 3, beta2: float = 0.3) -> float:
    """Relaxed boundary F-measure of binary masks ``pred`` and ``gt`` (see the module docstring)."""
    b_pred, b_gt = boundary(pred), boundary(gt)
    n_pred, n_gt = cv2.countNonZero(b_pred), cv2.countNonZero(b_gt)
    if n_pred == 0 or n_gt == 0:
        if n_pred or n_gt:
            return 0.0
        # Both masks are empty or full: right iff they agree (an empty prediction of an all-foreground gt is wrong).
        return 1.0 if cv2.countNonZero(_as_u8(pred)) == cv2.countNonZero(_as_u8(gt)) else 0.0
    disk = _disk(rho)
    # cv2.dilate's default border value is -inf: nothing outside the image is a boundary.
    precision = cv2.countNonZero(b_pred & cv2.dilate(b_gt, disk)) / n_pred
    recall = cv2.countNonZero(b_gt & cv2.dilate(b_pred, disk)) / n_gt
    if precision == 0 and recall == 0:
        return 0.0
    return (1 + beta2) * precision * recall / (beta2 * precision + recall)


def band_width(height: int, width: int, ratio: float = 0.02) -> int:
    """Boundary IoU band width: ``max(1, round(ratio × diagonal))`` (Cheng et al.'s ``dilation``)."""
    return max(1, int(round(ratio * math.sqrt(height**2 + width**2))))


def boundary_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Cheng et al.'s ``mask_to_boundary``: mask pixels within ``d`` px of the background, image padded with
    background, as uint8 0/1."""
    m = _as_u8(mask)
    h, w = m.shape
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    # d erosions by a 3×3 square == one erosion by a (2d+1)² square (what OpenCV does internally for iterations).
    eroded = cv2.erode(padded, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1)))
    return m - eroded[1 : h + 1, 1 : w + 1]


def boundary_iou(pred: np.ndarray, gt: np.ndarray, ratio: float = 0.02) -> float:
    """Boundary IoU of binary masks ``pred`` and ``gt`` (see the module docstring)."""
    d = band_width(*np.shape(gt), ratio=ratio)
    b_pred, b_gt = boundary_band(pred, d), boundary_band(gt, d)
    union = cv2.countNonZero(b_pred | b_gt)
    if union == 0:
        return 1.0
    return cv2.countNonZero(b_pred & b_gt) / union
