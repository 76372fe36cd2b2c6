"""Streaming salient-object metrics: one ``update`` per image, one ``results`` per dataset.

Metrics (each defined in the docstring of the module that computes it). Conventions are PySODMetrics': the uint8
prediction is divided by 255 and min-max normalised per image, the ground truth is ``gt > 128``.

* ``mae``: mean absolute error (:mod:`.pixelwise`).
* ``max_f``, ``mean_f``, ``adp_f``: F-measure, β² = 0.3: max / mean of the F curve over 256 thresholds, and F at
  the adaptive threshold min(2 × mean(pred), 1) (:mod:`.pixelwise`).
* ``wfm``: weighted F-measure, β² = 1 (:mod:`.structure`).
* ``sm``: S-measure, α = 0.5 (:mod:`.structure`).
* ``max_em``, ``mean_em``, ``adp_em``: E-measure: max / mean of the E curve, and at the adaptive threshold
  (:mod:`.pixelwise`).
* ``iou``, ``dice``: IoU / Dice of ``pred > 0.5`` (PySODMetrics' binary mode); ``max_iou``, ``mean_iou``,
  ``max_dice``, ``mean_dice``: max / mean of the IoU / Dice curves over the 256 thresholds (:mod:`.pixelwise`).
* ``relax_bf``: relaxed boundary F-measure (ρ = 3 px, β² = 0.3) and ``biou``: Boundary IoU (band
  max(1, round(0.02 × diagonal)) px), both of ``pred > 0.5``, with their empty cases (:mod:`.boundary`).

Dataset scores follow PySODMetrics: curves (precision, recall, F, E, IoU, Dice; 256 entries, entry i = threshold
255 - i) are averaged over images first and max / mean are taken on the averaged curve; every other score is the
mean of the per-image scores. Wherever PySODMetrics defines a metric (all but relax_bf and biou) the values equal
its ``MAE``, ``Fmeasure``, ``WeightedFmeasure``, ``Smeasure``, ``Emeasure`` and ``FmeasureV2`` (``IOUHandler`` /
``DICEHandler``, dynamic and binary modes) to 1e-6; the one deviation is the S-measure of an image whose foreground
centroid rounds to the last row or column, where PySODMetrics returns NaN and we return a finite score
(see :mod:`u2net.metrics.structure`).

Speed: everything comes from one pass over the image (:class:`~u2net.metrics.pair.PreparedPair`: 256-level
histograms per ground-truth class and S-measure quadrant) plus the few spatial operations the weighted F-measure and
the boundary metrics need, done with OpenCV. ``benchmarks/metrics_speed.py`` compares with PySODMetrics.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.io import unit_to_uint8
from .boundary import boundary_iou, relaxed_boundary_f
from .pair import N_LEVELS, PreparedPair, prepare_pair
from .pixelwise import (
    ThresholdCounts,
    adaptive_counts,
    adaptive_em,
    adaptive_f,
    binary_iou_dice,
    dice_curve,
    e_curve,
    f_curve,
    iou_curve,
    mae,
)
from .structure import s_measure, weighted_f_measure

__all__ = [
    "CURVE_KEYS",
    "PER_IMAGE_KEYS",
    "RESULT_KEYS",
    "PreparedPair",
    "SaliencyMetrics",
    "evaluate_batch",
    "prepare_pair",
    "probabilities_to_uint8",
]

#: Scalar keys of :meth:`SaliencyMetrics.results` (``n_images`` first, then the issue's ``results.json`` order).
RESULT_KEYS = (
    "n_images", "mae", "max_f", "mean_f", "adp_f", "wfm", "sm", "max_em", "mean_em", "adp_em",
    "iou", "dice", "max_iou", "max_dice", "relax_bf", "biou", "mean_iou", "mean_dice",
)  # fmt: skip
#: 256-entry curves of :meth:`SaliencyMetrics.results` (entry i = threshold 255 - i).
CURVE_KEYS = ("precision", "recall", "f_curve", "e_curve", "iou_curve", "dice_curve")
#: Keys of the per-image dict returned by :meth:`SaliencyMetrics.update` (max / mean over that image's own curves).
PER_IMAGE_KEYS = tuple(k for k in RESULT_KEYS if k != "n_images")

_MEAN_KEYS = ("mae", "adp_f", "wfm", "sm", "adp_em", "iou", "dice", "relax_bf", "biou")  # per-image means


class SaliencyMetrics:
    """Streaming salient-object metrics (see the module docstring for the list and the conventions).

    Call :meth:`update` once per image and :meth:`results` once per dataset. Only running sums are kept, so memory
    stays O(256) however large the dataset.

    Args:
        beta2: β² of the F-measure and of the relaxed boundary F-measure (PySODMetrics calls it ``beta``).
        wfm_beta2: β² of the weighted F-measure (PySODMetrics' ``WeightedFmeasure`` default: 1).
        alpha: S-measure weight of the object score.
        rho: relaxed boundary F-measure tolerance in px.
        band_ratio: Boundary IoU band width as a fraction of the image diagonal.
    """

    def __init__(
        self,
        beta2: float = 0.3,
        *,
        wfm_beta2: float = 1.0,
        alpha: float = 0.5,
        rho: int = 3,
        band_ratio: float = 0.02,
    ):
        self.beta2 = beta2
        self.wfm_beta2 = wfm_beta2
        self.alpha = alpha
        self.rho = rho
        self.band_ratio = band_ratio
        self.reset()

    def reset(self) -> None:
        """Forget all images."""
        self.n_images = 0
        self._sums = dict.fromkeys(_MEAN_KEYS, 0.0)
        self._curve_sums = {key: np.zeros(N_LEVELS) for key in CURVE_KEYS}

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """pred, gt: uint8 H×W arrays of equal shape (gt is foreground where > 128).

        Returns this image's own scores as floats, keyed by :data:`PER_IMAGE_KEYS` (max_* / mean_* over this
        image's curves), e.g. for a per-image CSV.
        """
        pair = PreparedPair.from_uint8(pred, gt)
        counts = ThresholdCounts(pair)
        precision, recall, f = f_curve(counts, self.beta2)
        curves = {
            "precision": precision,
            "recall": recall,
            "f_curve": f,
            "e_curve": e_curve(counts),
            "iou_curve": iou_curve(counts),
            "dice_curve": dice_curve(counts),
        }
        tp, fp = adaptive_counts(pair)
        iou, dice = binary_iou_dice(pair)
        pred_bin = pair.pred_binary
        scores = {
            "mae": mae(pair),
            "adp_f": adaptive_f(pair, tp, fp, self.beta2),
            "wfm": weighted_f_measure(pair, self.wfm_beta2),
            "sm": s_measure(pair, self.alpha),
            "adp_em": adaptive_em(pair, tp, fp),
            "iou": iou,
            "dice": dice,
            "relax_bf": relaxed_boundary_f(pred_bin, pair.gt, self.rho, self.beta2),
            "biou": boundary_iou(pred_bin, pair.gt, self.band_ratio),
        }
        self.n_images += 1
        for key, value in scores.items():
            self._sums[key] += value
        for key, curve in curves.items():
            self._curve_sums[key] += curve
        per_image = {**scores, **_curve_summaries(curves)}
        return {key: float(per_image[key]) for key in PER_IMAGE_KEYS}

    def merge(self, other: SaliencyMetrics) -> SaliencyMetrics:
        """Add the images ``other`` has seen (e.g. another rank's share of a validation set) to this one."""
        settings = ("beta2", "wfm_beta2", "alpha", "rho", "band_ratio")
        if any(getattr(self, name) != getattr(other, name) for name in settings):
            raise ValueError("cannot merge SaliencyMetrics with different settings")
        self.n_images += other.n_images
        for key, value in other._sums.items():
            self._sums[key] += value
        for key, curve in other._curve_sums.items():
            self._curve_sums[key] += curve
        return self

    def results(self) -> dict:
        """Dataset scores: the :data:`RESULT_KEYS` scalars (``n_images`` an int, the rest floats) and the
        :data:`CURVE_KEYS` curves ((256,) float64 arrays, entry i = threshold 255 - i, high threshold first)."""
        if self.n_images == 0:
            raise RuntimeError("SaliencyMetrics.results() called before any update()")
        n = self.n_images
        curves = {key: total / n for key, total in self._curve_sums.items()}
        scalars = {"n_images": n, **{key: total / n for key, total in self._sums.items()}, **_curve_summaries(curves)}
        return {**{key: scalars[key] for key in RESULT_KEYS}, **curves}


def _curve_summaries(curves: dict[str, np.ndarray]) -> dict[str, float]:
    summary = {}
    for name, key in (("f", "f_curve"), ("em", "e_curve"), ("iou", "iou_curve"), ("dice", "dice_curve")):
        summary[f"max_{name}"] = float(curves[key].max())
        summary[f"mean_{name}"] = float(curves[key].mean())
    return summary


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
    # its clip only absorbs the tolerated float overshoot (1.0000001 * 255 rounds to 255 anyway, -0 to 0).
    return unit_to_uint8(arr)


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
