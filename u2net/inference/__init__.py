"""Inference: mask prediction with the validation preprocessing, on PyTorch or ONNX Runtime, and
background removal (cut-outs, crops, new backgrounds, pipelined batches in PNG, WebP or JPEG); the ONNX
Runtime session factory and latency timer that export uses too."""

from ..lazy import lazy_exports

__all__ = [
    "BackgroundRemover",
    "BatchReport",
    "InferenceBackend",
    "Job",
    "JobError",
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
    "plan_job",
    "remove_batch",
    "resize_probability",
    "run_job",
    "run_pipeline",
]

# Each name's submodule, imported on first use: only TorchBackend's imports torch, so that ONNX Runtime
# inference (the `u2net` command's default) starts without it.
_SOURCES = {
    "OutputFormat": "batch",
    "run_pipeline": "batch",
    "InferenceBackend": "predictor",
    "ModelInfo": "predictor",
    "OnnxBackend": "onnx_backend",
    "Predictor": "predictor",
    "resize_probability": "refine",
    "mask_bbox": "refine",
    "BackgroundRemover": "remover",
    "BatchReport": "folder",
    "Job": "planning",
    "JobError": "planning",
    "RemovalOptions": "options",
    "parse_color": "options",
    "plan_job": "planning",
    "remove_batch": "folder",
    "run_job": "folder",
    "median_seconds": "runtime",
    "onnx_session": "runtime",
    "TorchBackend": "torch_backend",
}
# Submodules that were attributes of the package once it was imported (it used to import them, and with them
# refine and qa; the two backends' modules came later).
_SUBMODULES = frozenset(_SOURCES.values()) - {"torch_backend", "onnx_backend"} | {"qa"}


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, _SUBMODULES, __all__)
