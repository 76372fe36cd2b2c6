"""U²-Net architectures, the model registry, checkpoints, weight loading and ONNX import."""

from . import factory as _factory  # noqa: F401  (registers the architectures)
from .checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint
from .factory import create_model, load_model
from .onnx_import import onnx_to_state_dict, read_onnx_checkpoint
from .pretrained import (
    PRETRAINED,
    PretrainedCfg,
    WeightsDownloadError,
    download_weights,
    get_pretrained_cfg,
    list_pretrained,
)
from .registry import is_model, list_models, register_model
from .state_dict import infer_architecture, load_state_dict
from .u2net import RSU, U2NET_STAGES, U2NETP_STAGES, StageSpec, U2Net
from .weights import load_weights, read_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "PRETRAINED",
    "RSU",
    "U2NET_STAGES",
    "U2NETP_STAGES",
    "Checkpoint",
    "PretrainedCfg",
    "StageSpec",
    "U2Net",
    "WeightsDownloadError",
    "create_model",
    "download_weights",
    "get_pretrained_cfg",
    "infer_architecture",
    "is_model",
    "load_checkpoint",
    "list_models",
    "list_pretrained",
    "load_model",
    "load_state_dict",
    "load_weights",
    "onnx_to_state_dict",
    "read_checkpoint",
    "read_onnx_checkpoint",
    "register_model",
]
