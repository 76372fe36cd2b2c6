"""Evaluation metrics for salient-object detection, numerically matching PySODMetrics.

Streaming accumulators: ``update(pred, gt)`` once per image (uint8 H×W maps), ``results()`` once per dataset.
"""

from .pair import PreparedPair, prepare_pair
from .saliency import (
    CURVE_KEYS,
    PER_IMAGE_KEYS,
    RESULT_KEYS,
    SaliencyMetrics,
    evaluate_batch,
    probabilities_to_uint8,
)

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
