"""Shipping models: ONNX export (fp32, fp16, int8), its verification, and ONNX import back into PyTorch."""

from .onnx import (
    FP16_ATOL,
    INPUT_NAME,
    ExportWrapper,
    compare_accuracy,
    export_onnx,
    onnx_to_state_dict,
    quantize_dynamic_int8,
    quantize_static_int8,
    read_onnx_checkpoint,
    read_onnx_metadata,
    synthetic_image,
    verify_onnx,
)

__all__ = [
    "FP16_ATOL",
    "INPUT_NAME",
    "ExportWrapper",
    "compare_accuracy",
    "export_onnx",
    "onnx_to_state_dict",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "read_onnx_checkpoint",
    "read_onnx_metadata",
    "synthetic_image",
    "verify_onnx",
]
