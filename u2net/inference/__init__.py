"""Inference: mask prediction with the validation preprocessing, on PyTorch or ONNX Runtime, and
background removal (cut-outs, crops, new backgrounds, pipelined batches in PNG, WebP or JPEG); the ONNX
Runtime session factory and latency timer that export uses too."""

from .batch import OutputFormat, run_pipeline
from .predictor import ModelInfo, OnnxBackend, Predictor, TorchBackend, resize_probability
from .remover import BackgroundRemover, BatchReport, RemovalOptions, mask_bbox, parse_color, remove_batch
from .runtime import median_seconds, onnx_session

__all__ = [
    "BackgroundRemover",
    "BatchReport",
    "ModelInfo",
    "OnnxBackend",
    "OutputFormat",
    "Predictor",
    "RemovalOptions",
    "TorchBackend",
    "mask_bbox",
    "median_seconds",
    "onnx_session",
    "parse_color",
    "remove_batch",
    "resize_probability",
    "run_pipeline",
]
