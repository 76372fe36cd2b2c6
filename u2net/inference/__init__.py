"""Inference: mask prediction with the validation preprocessing, on PyTorch or ONNX Runtime, and
background removal (cut-outs, crops, new backgrounds, batches)."""

from .predictor import ModelInfo, OnnxBackend, Predictor, TorchBackend, resize_probability
from .remover import BackgroundRemover, BatchReport, RemovalOptions, mask_bbox, parse_color, remove_batch

__all__ = [
    "BackgroundRemover",
    "BatchReport",
    "ModelInfo",
    "OnnxBackend",
    "Predictor",
    "RemovalOptions",
    "TorchBackend",
    "mask_bbox",
    "parse_color",
    "remove_batch",
    "resize_probability",
]
