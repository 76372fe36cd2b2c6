"""From the model's S×S probability map to a mask at the photo's resolution.

- :func:`upsample_probability`: bilinear, bicubic or Lanczos (Pillow's, on the float map: rembg's
  kernel without its 8-bit truncation), or ``"guided"``: Lanczos, then a guided filter
  (:func:`guided_filter`, He et al., 2010) with the full-resolution photo as the guide inside the
  uncertain band, so that the mask's edges follow the photo's instead of the blurred 320² ones.
- :func:`sharpen_probability`: narrows the soft band that upsampling a 320² map leaves around edges.
- :func:`subject_box`: where a second pass on the subject's crop should look (see
  ``RemovalOptions.second_pass``).
- After that, on the mask: :func:`stretch_range` (min–max), :func:`clean_mask` (morphology),
  :func:`alpha_matting` (closed-form matting on a trimap from the mask) and :func:`decontaminate_colors`.
"""

from __future__ import annotations

import io
import sys
import threading
import warnings

import numpy as np
from PIL import Image

from ..data.imageops import (
    box_mean,
    closing,
    dilate,
    ellipse,
    label_components,
    opencv,
    opening,
    resize_linear,
    rgb_to_gray,
)
from ..data.io import unit_to_uint8
from ..errors import MissingExtraError, extra_hint

__all__ = [
    "UPSAMPLING",
    "Box",
    "alpha_matting",
    "clean_mask",
    "decontaminate_colors",
    "guided_filter",
    "mask_bbox",
    "paste_probability",
    "pymatting_quiet",
    "resize_probability",
    "sharpen_probability",
    "stretch_range",
    "subject_box",
    "upsample_probability",
]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive

UPSAMPLING = ("linear", "cubic", "lanczos", "guided")
UNCERTAIN = (0.02, 0.98)  # the band the guided filter may change: elsewhere the map is sure


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter of ``src`` (H×W float32) by ``guide`` (H×W×C uint8 or float in [0, 1]; colour
    guides are reduced to their luminance): locally ``q = a · I + b`` with ``a, b`` fitted in
    (2·radius+1)² windows, ``eps`` the regularisation (in units of the guide's [0, 1] range, squared).
    Where ``src`` is constant over a window, ``q`` equals it: the filter only moves edges."""
    if guide.ndim == 3:
        guide = rgb_to_gray(guide)
    image = guide.astype(np.float32) / (255.0 if guide.dtype == np.uint8 else 1.0)
    p = src.astype(np.float32)
    mean_i, mean_p = box_mean(image, radius), box_mean(p, radius)
    var_i = box_mean(image * image, radius) - mean_i * mean_i
    cov_ip = box_mean(image * p, radius) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius) * image + box_mean(b, radius)


def resize_probability(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize an S×S probability map to ``size`` = (h, w)."""
    if prob.shape == tuple(size):
        return prob
    return np.clip(_resize(prob, size, "linear"), 0.0, 1.0)


def _resize(prob: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    h, w = size
    if prob.shape == (h, w):
        return prob
    if method == "lanczos":
        image = Image.fromarray(np.ascontiguousarray(prob, dtype=np.float32), mode="F")
        return np.asarray(image.resize((w, h), Image.Resampling.LANCZOS))
    if method == "cubic":
        cv2 = opencv("bicubic upsampling")
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_CUBIC)
    return resize_linear(prob, (h, w))


def upsample_probability(prob: np.ndarray, image: np.ndarray, method: str = "lanczos", eps: float = 1e-3) -> np.ndarray:
    """An S×S probability map at the size of ``image`` (H×W×3 uint8), H×W float32 in [0, 1].

    ``"linear"`` / ``"cubic"`` / ``"lanczos"``: resampled. ``"guided"``: Lanczos, then
    :func:`guided_filter` by the image with a window of about two of the map's pixels at the image's
    scale (at least 2 px), applied only in the uncertain band (:data:`UNCERTAIN`, grown by a pixel), so
    that sure regions keep their values."""
    if method not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {method!r}")
    h, w = image.shape[:2]
    up = _resize(prob, (h, w), "lanczos" if method == "guided" else method)
    if method == "guided":
        up = np.clip(up, 0.0, 1.0)
        scale = max(h / prob.shape[0], w / prob.shape[1])
        band = dilate((up > UNCERTAIN[0]) & (up < UNCERTAIN[1]), np.ones((3, 3), np.uint8))
        filtered = guided_filter(image, up, radius=max(2, round(2 * scale)), eps=eps)
        up = np.where(band, filtered, up)
    return np.clip(up, 0.0, 1.0).astype(np.float32, copy=False)


def sharpen_probability(prob: np.ndarray, gain: float) -> np.ndarray:
    """``sigmoid(gain · logit(prob))`` of an H×W map in [0, 1]: 0.5 stays 0.5 (a mask thresholded there is
    unchanged) and, for ``gain`` > 1, the soft band around every edge narrows by about ``gain`` while sure
    regions move closer to 0 and 1. ``gain`` 1 returns ``prob`` itself."""
    if gain == 1.0:
        return prob
    p = np.clip(prob.astype(np.float32, copy=False), 1e-6, 1.0 - 1e-6)
    return (1.0 / (1.0 + np.power((1.0 - p) / p, gain))).astype(np.float32)


def mask_bbox(mask: np.ndarray | Image.Image, padding: int = 0, min_alpha: float = 1) -> Box | None:
    """The bounding box ``(x0, y0, x1, y1)`` (x1, y1 exclusive, as ``PIL.Image.crop`` takes it) of
    the pixels with ``mask >= min_alpha``, grown by ``padding`` on each side and clamped to the
    mask; ``None`` if there are none."""
    array = np.asarray(mask)
    rows = np.flatnonzero((array >= min_alpha).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((array >= min_alpha).any(axis=0))
    h, w = array.shape[:2]
    return (
        max(int(cols[0]) - padding, 0),
        max(int(rows[0]) - padding, 0),
        min(int(cols[-1]) + 1 + padding, w),
        min(int(rows[-1]) + 1 + padding, h),
    )


def subject_box(prob: np.ndarray, threshold: float = 0.5, margin: float = 0.15) -> Box | None:
    """The bounding box ``(x0, y0, x1, y1)`` of ``prob ≥ threshold`` (H×W) grown by ``margin`` × its
    larger side on every side and clamped to the map; ``None`` when nothing reaches the threshold."""
    tight = mask_bbox(prob, 0, threshold)
    if tight is None:
        return None
    x0, y0, x1, y1 = tight
    return mask_bbox(prob, round(margin * max(x1 - x0, y1 - y0)), threshold)


def paste_probability(full: np.ndarray, crop_prob: np.ndarray, box: Box, feather: int) -> np.ndarray:
    """``full`` (H×W) with ``crop_prob`` (the box's size) pasted into ``box``, blended linearly over
    ``feather`` px inside the box's edges that are not the image's own edges (no seam there)."""
    x0, y0, x1, y1 = box
    h, w = full.shape
    weight = np.ones((y1 - y0, x1 - x0), np.float32)
    if feather > 0:
        ramp = np.minimum(1.0, (np.arange(max(y1 - y0, x1 - x0)) + 1) / (feather + 1)).astype(np.float32)
        ys, xs = ramp[: y1 - y0], ramp[: x1 - x0]
        if y0 > 0:
            weight *= ys[:, None]
        if y1 < h:
            weight *= ys[::-1][:, None]
        if x0 > 0:
            weight *= xs[None, :]
        if x1 < w:
            weight *= xs[::-1][None, :]
    out = full.copy()
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = weight * crop_prob + (1.0 - weight) * region
    return out


# -- the mask's post-processing (after upsampling) ----------------------------------------
def stretch_range(prob: np.ndarray) -> np.ndarray:
    """Min–max normalise a probability map to [0, 1] (the original U²-Net's ``normPRED``); a
    constant map is returned as it is."""
    lo, hi = float(prob.min()), float(prob.max())
    return (prob - lo) / (hi - lo) if hi - lo > 1e-6 else prob


def clean_mask(alpha: np.ndarray, kernel: int | None = None, min_island: float = 0.05) -> np.ndarray:
    """Morphological clean-up of a uint8 mask (see ``RemovalOptions.post_process``)."""
    h, w = alpha.shape
    if kernel is None:
        kernel = max(3, round(min(h, w) / 100))
    kernel = max(1, int(kernel)) | 1  # odd
    element = ellipse(kernel)
    binary = alpha >= 128
    cleaned = closing(opening(binary, element), element)
    labels, areas = label_components(cleaned)
    if len(areas) > 1:
        keep = np.concatenate([[False], areas >= min_island * areas.max()])
        cleaned = keep[labels]
    region = dilate(cleaned, element)
    out = np.where(region, alpha, 0).astype(np.uint8)
    out[cleaned & ~binary] = 255
    return out


class _Discard(io.TextIOBase):
    """A text stream that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)


class _QuietStdout:
    """``with pymatting_quiet:`` sends ``sys.stdout`` to nowhere while any thread is inside the block.

    pymatting's incomplete Cholesky prints "PERFORMANCE WARNING" to stdout whenever a diagonal shift fails and it
    retries a larger one (3 of 54 photos measured with ``--alpha-matting``, 1 with ``--quality soft``), and stdout
    is where ``u2net remove IN -`` writes the cut-out. The swap is counted under a lock, so overlapping blocks in
    several threads (the service's) restore the stream the first one found; other threads' prints to stdout are
    dropped meanwhile too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved, sys.stdout = sys.stdout, _Discard()
            self._depth += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                sys.stdout, self._saved = self._saved, None


pymatting_quiet = _QuietStdout()


def alpha_matting(
    rgb: np.ndarray, alpha: np.ndarray, fg_threshold: int = 240, bg_threshold: int = 15, erode_size: int = 15
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form alpha matting on a trimap made from ``alpha`` like rembg's ``alpha_matting_cutout``.

    Returns (uint8 alpha, uint8 estimated foreground colours). A trimap without sure foreground or
    background (nothing to anchor the matte) gives the mask back unchanged, with ``None`` colours and
    a warning.
    """
    try:
        from pymatting import estimate_alpha_cf, estimate_foreground_ml
        from scipy.ndimage import binary_erosion
    except ImportError:
        raise MissingExtraError(extra_hint("alpha matting", "matting", "pymatting")) from None

    is_fg = alpha > fg_threshold
    is_bg = alpha < bg_threshold
    structure = np.ones((erode_size, erode_size), np.uint8) if erode_size > 0 else None
    is_fg = binary_erosion(is_fg, structure=structure)
    is_bg = binary_erosion(is_bg, structure=structure, border_value=1)
    if not is_fg.any() or not is_bg.any():
        warnings.warn("alpha matting skipped: the trimap has no sure foreground or no sure background", stacklevel=3)
        return alpha, None
    trimap = np.full(alpha.shape, 0.5)
    trimap[is_fg] = 1.0
    trimap[is_bg] = 0.0
    image = rgb / 255.0
    if (is_fg | is_bg).all():
        matte = trimap
    else:
        with pymatting_quiet:
            matte = estimate_alpha_cf(image, trimap)
    foreground = estimate_foreground_ml(image, matte)
    return unit_to_uint8(matte), unit_to_uint8(foreground)


def decontaminate_colors(rgb: np.ndarray, alpha: np.ndarray, margin: int = 8) -> np.ndarray:
    """The photo's colours with the background's bleed taken out of the semi-transparent edge: there
    each pixel is a mix ``alpha · F + (1 - alpha) · B``, and the foreground colour ``F`` is estimated with
    pymatting's multi-level ``estimate_foreground_ml``. Pixels with alpha 0 or 255 keep their colour; only
    the bounding box of the edge band (grown by ``margin``) is solved, so large photos stay fast."""
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        raise MissingExtraError(extra_hint("colour decontamination", "matting", "pymatting")) from None
    band = (alpha > 0) & (alpha < 255)
    box = mask_bbox(band.astype(np.uint8), padding=margin)
    if box is None:
        return rgb
    x0, y0, x1, y1 = box
    foreground = estimate_foreground_ml(rgb[y0:y1, x0:x1] / 255.0, alpha[y0:y1, x0:x1] / 255.0)
    out = rgb.copy()
    region, edge = out[y0:y1, x0:x1], band[y0:y1, x0:x1]
    region[edge] = unit_to_uint8(foreground)[edge]
    return out
