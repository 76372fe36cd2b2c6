"""Soft-edge alpha: closed-form matting on a trimap made from the model's own uncertainty.

A U²-Net map upsampled from 320² is smooth where the photo's edge is hairy, furry or translucent: its soft band
is the network's blur, not the subject's alpha. :func:`soft_alpha` replaces the map inside that band by an alpha
matte that follows the photo's colours:

1. **Automatic trimap** (:func:`auto_trimap`): the *uncertain core* is where the map is neither sure background
   nor sure foreground (:data:`UNCERTAIN_LO` < p < :data:`UNCERTAIN_HI`). It is grown by a distance proportional to
   the photo's longer side, more on the foreground side (:data:`GROW_FG`; the model's fuzzy edges sit outside the
   true soft band as often as inside it, and hair it calls foreground has gaps) than on the background side
   (:data:`GROW_BG`; every pixel of plain background left unknown is one more where the matte can go grey). Both
   growths shrink where the core is narrow: at most :data:`GROW_PER_HALF_WIDTH` times the core's widest half-width
   nearby (on the background side in the same proportion). Where the model draws a crisp edge (a horse's leg, a
   cow's horn) the band stays a few pixels wide, so the matte cannot erase a thin part whose colours resemble the
   background; where it draws a wide halo (hair, fur) the band gets most of it. The 0.5 contour is part of the
   core too, so that a hard mask (a thresholded map) gets its edge matted as well. Outside it, ``p ≥ 0.5`` is
   known foreground and the rest known background. No user trimap is involved.
2. **Bounded solve**: only the bounding box of the unknown band (plus a margin) is solved, downscaled (area
   averaging) so that it holds at most :data:`MAX_SOLVE_PIXELS` pixels and :data:`MAX_UNKNOWN_PIXELS` unknowns:
   time and memory stay bounded on any photo (a 24 MP photo is solved at about 0.5 MP).
3. **Closed-form matting with a confidence prior**: the matting Laplacian ``L`` of Levin et al. (3×3 windows,
   ε = :data:`EPSILON`; pymatting's ``cf_laplacian``) restricted to the unknown pixels, with the known ones as
   boundary conditions (as pymatting's ``estimate_alpha_cf``), plus a data term ``λ·c`` pulling each unknown pixel
   towards the model's side of 0.5, weighted by the model's confidence ``c = |2p − 1|^k`` (λ = :data:`PRIOR_WEIGHT`,
   k = :data:`PRIOR_POWER`): where the map is unsure the photo decides alone; in the grown margins, where the map
   was sure, the matte cannot drift into a grey haze over smooth background. Solved by conjugate gradients with an
   incomplete-Cholesky preconditioner (pymatting's ``cg`` and ``ichol``).
4. The matte is upsampled bilinearly to the crop (when it was downscaled) and replaces the map inside the unknown
   band only; then levels (:data:`LEVELS`) map ≤ 0.05 to 0 and ≥ 0.95 to 1, linearly between: closed-form mattes
   leave a faint haze on both sides of an edge (textured foreground read as slightly transparent, background as
   slightly opaque), and outside the band the map's own tails (≤ 0.02, ≥ 0.98) become exact 0 and 1.

The constants were tuned on the alphamatting.com training photos GT01–GT13 only (``benchmarks/soft_edges.py``;
GT15–GT27 are the held-out report). Measured and not kept (same tuning photos): a fixed erosion of the 0.5
boundary instead of the uncertain core; a uniform prior towards ``p`` (λ 1e-3…1e-1); KNN, LKM and LBDM matting
instead of closed form (no better, 2–20× slower); a second solve on the matte's own uncertain band; the model run
at 480² or 640²; a guided filter after upsampling the matte; known pixels on the medial axis of the model's sure
regions inside the band (spares thin parts as the narrower growth does, but loses most of the hair gain); the
matte kept only where it is soft over a neighbourhood, the map elsewhere (no gain on ECSSD); the core limited to
3–5 % of the longer side from the 0.5 contour, the map snapped to its side beyond (worse on the tune photos).

On hard-edged subjects with binary truths (ECSSD) the matte costs MAE and boundary IoU against the mask it starts
from (the matte moves and softens edges the annotation draws hard, and fades thin parts whose colours resemble the
background). The growth by the core's width (:data:`GROW_PER_HALF_WIDTH`) and the prior (:data:`PRIOR_WEIGHT`) were
chosen together on the tune photos and ECSSD's first 100: the lowest ECSSD MAE among the settings that keep each
tune-part error within 0.02 of its ratio to rembg with the fixed growth (ECSSD MAE 0.0452 → 0.0407); a narrower
growth or a larger ``prior`` trades the rest of the hair gain back for that: about neutral on ECSSD at λ 3e-2,
where most of the gain on hair is gone (``benchmarks/soft_edges.py --binary`` measures it).

References: A. Levin, D. Lischinski, Y. Weiss, "A Closed-Form Solution to Natural Image Matting", IEEE TPAMI 30(2),
2008 (the Laplacian, and soft constraints as a data term); T. Germer et al., "PyMatting: A Python Library for Alpha
Matting", JOSS 2020 (the Laplacian, ``ichol`` and ``cg`` used here); C. Rhemann et al., "A Perceptually Motivated
Online Benchmark for Image Matting", CVPR 2009 (the photos and errors it was tuned and measured on).
"""

from __future__ import annotations

import math

import numpy as np

from ..data.imageops import opencv
from ..errors import MissingExtraError, extra_hint
from .refine import Box, mask_bbox, pymatting_quiet

__all__ = [
    "EPSILON",
    "GROW_BG",
    "GROW_FG",
    "GROW_PER_HALF_WIDTH",
    "LEVELS",
    "MAX_SOLVE_PIXELS",
    "MAX_UNKNOWN_PIXELS",
    "PRIOR_POWER",
    "PRIOR_WEIGHT",
    "UNCERTAIN_HI",
    "UNCERTAIN_LO",
    "auto_trimap",
    "soft_alpha",
    "solve_box",
]

# Tuned on GT01–GT13 of the alphamatting.com training set (benchmarks/soft_edges.py), never on GT15–GT27; the input
# was a preset's mask / 255 (`balanced` and `best`, stretched and sharpened 1.5, measured the same).
UNCERTAIN_LO = 0.02  # the uncertain core: UNCERTAIN_LO < p < UNCERTAIN_HI
UNCERTAIN_HI = 0.98
GROW_FG = 0.03  # the core grown into the model's foreground by this fraction of the photo's longer side (24 px at 800)
GROW_BG = 0.01  # ... and into its background by this one (8 px at 800)
EPSILON = 1e-7  # the matting Laplacian's regularisation (Levin et al.'s ε): pymatting's default measured best
# the growth at most this × the core's widest half-width within GROW_FG of the pixel: 2 keeps the tune photos' gain
# on hair (each error within 0.02 of its ratio to rembg with the fixed growth) at a lower cost on hard edges
GROW_PER_HALF_WIDTH = 2.0
PRIOR_WEIGHT = 3e-4  # λ of the confidence prior, per pixel, against the Laplacian's O(1) diagonal
PRIOR_POWER = 8.0  # k in c = |2p − 1|^k: c ≈ 0.4 at p = 0.03, ≈ 0.02 at p = 0.1, 0 at 0.5
LEVELS = (0.05, 0.95)  # the result's levels: ≤ 0.05 → 0, ≥ 0.95 → 1, linear between (the matte's faint haze either way)

# Bounds on the work, whatever the photo's size: the solve's crop is downscaled to hold at most these.
MAX_SOLVE_PIXELS = 500_000  # the Laplacian costs ~0.4 kB per crop pixel
MAX_UNKNOWN_PIXELS = 250_000  # the preconditioner ~1.3 kB per unknown pixel (≈ 80 non-zeros, value and index)
MARGIN = 4  # known pixels kept around the unknown band in the solve, at the solve's scale (≥ the 3×3 window)
RTOL = 1e-5  # conjugate gradients' relative residual: alpha is stored in 8 bits
# Incomplete Cholesky's diagonal shifts, smallest first: a zero shift fails on most of these systems, 1e-4 on 1 of 54
# photos measured (pymatting then prints a warning, kept off stdout by `pymatting_quiet`, and tries the next).
ICHOL_SHIFTS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
ICHOL_NNZ_PER_UNKNOWN = 128  # the factor's room: ≈ 80 non-zeros per row measured; beyond, Jacobi instead


def auto_trimap(
    prob: np.ndarray,
    lo: float = UNCERTAIN_LO,
    hi: float = UNCERTAIN_HI,
    grow_fg: float = GROW_FG,
    grow_bg: float = GROW_BG,
    grow_per_width: float = GROW_PER_HALF_WIDTH,
) -> np.ndarray:
    """A trimap (H×W uint8: 0 background, 128 unknown, 255 foreground) from the model's map ``prob`` (H×W in [0, 1]).

    Unknown: the uncertain core ``lo < prob < hi`` and the pixels either side of the 0.5 contour, grown by up to
    ``grow_fg`` × the longer side into ``prob ≥ 0.5`` and up to ``grow_bg`` × the longer side into ``prob < 0.5``
    (Euclidean distance, so that the cost does not depend on the growth). Both growths are scaled down where the
    core is narrow: to at most ``grow_per_width`` × the core's widest half-width within the foreground growth of the
    pixel (``math.inf``: the full growth everywhere). Known: ``prob ≥ 0.5`` foreground, the rest background."""
    cv2 = opencv("soft edges", "matting")  # the matting extra brings OpenCV with pymatting
    prob = np.asarray(prob, np.float32)
    foreground = prob >= 0.5
    # the 0.5 contour belongs to the core too, so that a hard mask (a thresholded map) still gets its edge matted
    contour = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    core = ((prob > lo) & (prob < hi)) | contour
    trimap = np.where(foreground, np.uint8(255), np.uint8(0))
    if not core.any():
        return trimap
    side = max(prob.shape)
    # the distance of every pixel to the core (0 on it): one linear-time pass for any growth
    distance = cv2.distanceTransform(np.where(core, 0, 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    share = np.float32(1.0)  # of the full growth, per pixel
    if math.isfinite(grow_per_width) and grow_fg > 0:
        full = grow_fg * side / grow_per_width  # the half-width from which the growth is full
        share = _core_half_width(core, grow_fg * side, full) * np.float32(1 / 255)
    reach = np.where(foreground, np.float32(grow_fg * side), np.float32(grow_bg * side)) * share  # float32: 24 MP
    trimap[core | (distance <= reach)] = 128
    return trimap


def _core_half_width(core: np.ndarray, radius: float, cap: float) -> np.ndarray:
    """H×W uint8: the largest half-width of ``core`` (its pixels' distance to the nearest pixel outside it) within
    a square of ``radius`` px around each pixel, in 255ths of ``cap`` (255: ``cap`` or wider). In 8 bits (finer than
    0.4 px up to 24 MP photos), OpenCV's max filter is 4× faster than on floats."""
    cv2 = opencv("soft edges", "matting")
    half = cv2.distanceTransform(core.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # |half · 255 / cap + 0.499| rounded and saturated: rounded up, never narrower than the half-width
    quantised = cv2.convertScaleAbs(half, alpha=255.0 / cap, beta=0.499)
    size = 2 * math.ceil(radius) + 1
    return cv2.dilate(quantised, cv2.getStructuringElement(cv2.MORPH_RECT, (size, size)))


def solve_box(trimap: np.ndarray, max_pixels: int = MAX_SOLVE_PIXELS) -> tuple[Box, float] | None:
    """The part of the photo the matte is solved on: ((x0, y0, x1, y1), scale), the bounding box of the trimap's
    unknown band grown by :data:`MARGIN` pixels at the solve's scale, and the scale (≤ 1) that brings it within
    ``max_pixels`` pixels and :data:`MAX_UNKNOWN_PIXELS` unknowns; ``None`` when nothing is unknown."""
    unknown = trimap == 128
    tight = mask_bbox(unknown)
    if tight is None:
        return None
    x0, y0, x1, y1 = tight
    count = int(np.count_nonzero(unknown))
    scale = 1.0
    for _ in range(2):  # the margin depends on the scale and the scale on the boxed area: settles in two rounds
        pad = math.ceil(MARGIN / scale)
        box = (max(x0 - pad, 0), max(y0 - pad, 0), min(x1 + pad, trimap.shape[1]), min(y1 + pad, trimap.shape[0]))
        area = (box[2] - box[0]) * (box[3] - box[1])
        scale = min(1.0, math.sqrt(max_pixels / area), math.sqrt(MAX_UNKNOWN_PIXELS / count))
    return box, scale


def _closed_form(image: np.ndarray, trimap: np.ndarray, prob: np.ndarray, epsilon: float, prior: float, power: float):
    """Closed-form alpha (h×w float64) of ``image`` (h×w×3 float64 in [0, 1]) on ``trimap`` (h×w uint8), unknown
    pixels pulled towards ``prob ≥ 0.5`` with weight ``prior · |2·prob − 1|^power``."""
    import scipy.sparse
    from pymatting import cf_laplacian, cg, ichol, jacobi

    is_fg, unknown = trimap.ravel() == 255, trimap.ravel() == 128
    known = ~unknown
    laplacian = cf_laplacian(image, epsilon=epsilon, radius=1, is_known=known.reshape(trimap.shape)).tocsr()
    rows = laplacian[unknown]
    system, coupling = rows[:, unknown], rows[:, known]
    p = prob.ravel()[unknown].astype(np.float64)
    weight = prior * np.abs(2.0 * p - 1.0) ** power
    system = (system + scipy.sparse.diags(weight)).tocsc()
    rhs = -coupling.dot(is_fg[known].astype(np.float64)) + weight * (p >= 0.5)
    n = system.shape[0]
    try:
        with pymatting_quiet:  # a failed shift is retried with the next, and pymatting says so on stdout
            preconditioner = ichol(system, shifts=list(ICHOL_SHIFTS), max_nnz=ICHOL_NNZ_PER_UNKNOWN * n + 1024)
    except ValueError:  # no shift made it positive definite, or the factor outgrew its room: slower, same answer
        preconditioner = jacobi(system)
    alpha = is_fg.astype(np.float64)
    alpha[unknown] = cg(system.tocsr(), rhs, M=preconditioner, rtol=RTOL)
    return np.clip(alpha, 0.0, 1.0).reshape(trimap.shape)


def soft_alpha(
    rgb: np.ndarray,
    prob: np.ndarray,
    *,
    lo: float = UNCERTAIN_LO,
    hi: float = UNCERTAIN_HI,
    grow_fg: float = GROW_FG,
    grow_bg: float = GROW_BG,
    grow_per_width: float = GROW_PER_HALF_WIDTH,
    epsilon: float = EPSILON,
    prior: float = PRIOR_WEIGHT,
    power: float = PRIOR_POWER,
    levels: tuple[float, float] = LEVELS,
    max_pixels: int = MAX_SOLVE_PIXELS,
) -> np.ndarray:
    """A soft alpha matte (H×W float32 in [0, 1]) of ``rgb`` (H×W×3 uint8, the photo at full resolution) from the
    model's map ``prob`` (H×W, in [0, 1], upsampled to the photo; the constants were tuned on a preset's final mask /
    255: Lanczos-upsampled, stretched and sharpened): see the module docstring. A hard (thresholded) mask has no
    uncertain band whose width the growth could follow: pass ``grow_per_width=math.inf`` for the full growth.

    The matte replaces ``prob`` inside the unknown band of :func:`auto_trimap`, then ``levels`` = (black, white) are
    applied to the whole result (``(a − black) / (white − black)``, clipped): outside the band, where ``prob`` ≤
    :data:`UNCERTAIN_LO` or ≥ :data:`UNCERTAIN_HI`, that is 0 or 1. When the map has no sure foreground or no sure
    background to anchor the matte (an all-foreground, all-background or all-unsure map), ``prob`` itself comes back
    (as float32)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != prob.shape:
        raise ValueError(f"expected an H×W×3 photo and an H×W map of the same size, got {rgb.shape} and {prob.shape}")
    try:
        import pymatting  # noqa: F401
    except ImportError:
        raise MissingExtraError(extra_hint("soft edges", "matting", "pymatting")) from None
    cv2 = opencv("soft edges", "matting")
    prob = np.asarray(prob, np.float32)
    trimap = auto_trimap(prob, lo, hi, grow_fg, grow_bg, grow_per_width)
    found = solve_box(trimap, max_pixels)
    if found is None or not (trimap == 255).any() or not (trimap == 0).any():
        return prob
    (x0, y0, x1, y1), scale = found
    crop_trimap = trimap[y0:y1, x0:x1]
    image, small_trimap, small_prob = rgb[y0:y1, x0:x1], crop_trimap, prob[y0:y1, x0:x1]
    if scale < 1.0:
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_prob = cv2.resize(small_prob, size, interpolation=cv2.INTER_AREA)
        # nearest keeps the three labels; a pixel's label is then that of one of the pixels it covers
        small_trimap = cv2.resize(crop_trimap, size, interpolation=cv2.INTER_NEAREST)
    if not (small_trimap == 128).any():
        return prob
    matte = _closed_form(image.astype(np.float64) / 255.0, small_trimap, small_prob, epsilon, prior, power)
    if scale < 1.0:
        matte = cv2.resize(matte.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = prob.copy()
    region = out[y0:y1, x0:x1]
    band = crop_trimap == 128
    region[band] = matte[band]
    black, white = levels
    out -= black
    out *= 1.0 / (white - black)
    return np.clip(out, 0.0, 1.0, out=out)
