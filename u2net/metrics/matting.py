"""Errors of a predicted alpha matte against a soft (real alpha) ground truth, the matting field's four.

Definitions as in the alphamatting.com benchmark (Rhemann et al., "A Perceptually Motivated Online Benchmark
for Image Matting", CVPR 2009) and their common evaluation code (Deep Image Matting, Xu et al. CVPR 2017;
the Python port in GCA-Matting, Li & Lu AAAI 2020); alpha in [0, 1]:

* SAD: sum of |alpha - truth| over the region, / 1000.
* MSE: mean of (alpha - truth)² over the region's pixels.
* Grad: sum over the region of (|∇alpha| - |∇truth|)², gradients by first-order Gaussian derivative filters of
  σ 1.4, / 1000.
* Conn: sum over the region of |φ(alpha) - φ(truth)|, / 1000, where φ(a) = 1 - (a - l)·[a - l ≥ 0.15] and l is the
  highest threshold (steps of 0.1) at which the pixel still belongs to the largest 4-connected component of
  (alpha ≥ t) ∧ (truth ≥ t).

Each is reported over two regions: the trimap's unknown band (value 128) and the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "MATTING_KEYS",
    "MattingMetrics",
    "connectivity_error",
    "gradient_error",
    "matting_errors",
    "mse_error",
    "sad_error",
    "unknown_band",
]

GRAD_SIGMA = 1.4
CONN_STEP = 0.1
CONN_MIN_DISTANCE = 0.15  # below this, φ ignores how far a pixel lies above its connectivity level
UNKNOWN = 128  # the trimap value of the unknown band
MATTING_KEYS = ("sad", "mse", "grad", "conn")


def unknown_band(trimap: np.ndarray) -> np.ndarray:
    """H×W bool: the trimap's unknown pixels (value 128 in an 8-bit trimap)."""
    return np.asarray(trimap) == UNKNOWN


def _region(alpha: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    return np.ones(alpha.shape, bool) if region is None else np.asarray(region, bool)


def sad_error(alpha: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum of absolute differences over ``region`` (H×W bool; whole image when None), / 1000."""
    return float(np.abs(alpha - truth)[_region(alpha, region)].sum() / 1000.0)


def mse_error(alpha: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean squared error over the pixels of ``region`` (0 for an empty region)."""
    inside = _region(alpha, region)
    return float(((alpha - truth) ** 2)[inside].sum() / max(int(inside.sum()), 1))


def _gaussian_derivative_kernel(sigma: float = GRAD_SIGMA, epsilon: float = 1e-2) -> np.ndarray:
    """The x-derivative-of-Gaussian kernel of the matting benchmarks' ``gaussgradient`` (unit L2 norm)."""
    half = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2.0 * np.pi) * sigma * epsilon))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))
    kernel = np.outer(gauss, -u * gauss / sigma**2)  # rows: Gaussian; columns: its derivative
    return kernel / np.sqrt((kernel**2).sum())


def _gradient_magnitude(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    gx = ndimage.convolve(image, kernel, mode="nearest")
    gy = ndimage.convolve(image, kernel.T, mode="nearest")
    return np.sqrt(gx**2 + gy**2)


def gradient_error(alpha: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    """Sum over ``region`` of the squared difference of gradient magnitudes (σ 1.4), / 1000."""
    kernel = _gaussian_derivative_kernel()
    diff = (_gradient_magnitude(alpha, kernel) - _gradient_magnitude(truth, kernel)) ** 2
    return float(diff[_region(alpha, region)].sum() / 1000.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)  # 4-connectivity
    if count == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def connectivity_error(alpha: np.ndarray, truth: np.ndarray, region: np.ndarray | None = None) -> float:
    """Rhemann et al.'s connectivity error over ``region`` (thresholds in steps of 0.1), / 1000."""
    steps = np.arange(0.0, 1.0 + CONN_STEP / 2, CONN_STEP)
    level = np.full(alpha.shape, -1.0)
    for previous, threshold in zip(steps[:-1], steps[1:]):
        connected = _largest_component((alpha >= threshold) & (truth >= threshold))
        level[(level == -1) & ~connected] = previous  # the last threshold at which the pixel was still connected
    level[level == -1] = 1.0

    def phi(a: np.ndarray) -> np.ndarray:
        d = a - level
        return 1.0 - d * (d >= CONN_MIN_DISTANCE)

    return float(np.abs(phi(alpha) - phi(truth))[_region(alpha, region)].sum() / 1000.0)


ERRORS = {"sad": sad_error, "mse": mse_error, "grad": gradient_error, "conn": connectivity_error}


def matting_errors(alpha: np.ndarray, truth: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
    """Every error of one H×W matte against its truth (both float in [0, 1]): ``<key>`` over the whole image and,
    given an 8-bit ``trimap``, ``<key>_band`` over its unknown band."""
    alpha = np.asarray(alpha, np.float64)
    truth = np.asarray(truth, np.float64)
    if alpha.shape != truth.shape:
        raise ValueError(f"matte {alpha.shape} and truth {truth.shape} differ in size")
    result = {key: fn(alpha, truth) for key, fn in ERRORS.items()}
    if trimap is not None:
        if trimap.shape != truth.shape:
            raise ValueError(f"trimap {trimap.shape} and truth {truth.shape} differ in size")
        band = unknown_band(trimap)
        result.update({f"{key}_band": fn(alpha, truth, band) for key, fn in ERRORS.items()})
    return result


@dataclass
class MattingMetrics:
    """Mean matting errors over a dataset: ``update`` once per image (uint8 or float H×W), ``results`` once."""

    def __post_init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def update(self, alpha: np.ndarray, truth: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
        """Score one image; returns its errors (as :func:`matting_errors`)."""
        row = matting_errors(_unit(alpha), _unit(truth), trimap)
        self.rows.append(row)
        return row

    def results(self) -> dict[str, float]:
        """The mean of each error over the images scored (band errors over those that had a trimap)."""
        keys = dict.fromkeys(key for row in self.rows for key in row)
        return {key: float(np.mean([row[key] for row in self.rows if key in row])) for key in keys}


def _unit(x: np.ndarray) -> np.ndarray:
    """A map as float64 in [0, 1]: uint8 scaled by 1/255, floats kept."""
    x = np.asarray(x)
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
