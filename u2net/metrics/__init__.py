"""Evaluation metrics for salient-object detection, numerically matching PySODMetrics.

Streaming accumulators: ``update(pred, gt)`` once per image (uint8 H×W maps), ``results()`` once per dataset.
"""

from .saliency import PreparedPair, SaliencyMetrics, evaluate_batch, prepare_pair, probabilities_to_uint8

__all__ = ["PreparedPair", "SaliencyMetrics", "evaluate_batch", "prepare_pair", "probabilities_to_uint8"]
