"""Shipping models: ONNX export (fp32, fp16), its verification and int8 quantisation.

ONNX import back into PyTorch lives in :mod:`u2net.models.onnx_import` (it builds models); its functions are
re-exported here, where they have always been importable from.
"""

from ..models.onnx_format import read_onnx_metadata
from ..models.onnx_import import onnx_to_state_dict, read_onnx_checkpoint
from .api import VerificationError, export_model, input_size_note
from .onnx import INPUT_NAME, ExportWrapper, export_onnx
from .quantize import (
    DEFAULT_MIN_SQNR_DB,
    coarse_int8_convolutions,
    compare_accuracy,
    quantize_dynamic_int8,
    quantize_static_int8,
)
from .verify import FP16_ATOL, synthetic_image, verify_onnx

__all__ = [
    "DEFAULT_MIN_SQNR_DB",
    "FP16_ATOL",
    "INPUT_NAME",
    "ExportWrapper",
    "VerificationError",
    "coarse_int8_convolutions",
    "compare_accuracy",
    "export_model",
    "export_onnx",
    "input_size_note",
    "onnx_to_state_dict",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "read_onnx_checkpoint",
    "read_onnx_metadata",
    "synthetic_image",
    "verify_onnx",
]
