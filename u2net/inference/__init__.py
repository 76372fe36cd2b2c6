"""Inference: mask prediction with the validation preprocessing, on PyTorch or ONNX Runtime."""

from .predictor import ModelInfo, OnnxBackend, Predictor, TorchBackend, resize_probability

__all__ = ["ModelInfo", "OnnxBackend", "Predictor", "TorchBackend", "resize_probability"]
