"""U²-Net architectures, the model registry, checkpoints, weight loading and ONNX import."""

from ..lazy import lazy_exports

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
    "WeightsMismatchError",
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

# Each name's submodule, imported on first use: the pretrained catalogue (and .onnx_format) import no torch,
# so ONNX Runtime inference reads a tag's file and preprocessing without it. The registry holds the built-in
# architectures itself, whichever module is imported first.
_SOURCES = {
    "FORMAT_VERSION": "checkpoint",
    "Checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "create_model": "factory",
    "load_model": "factory",
    "onnx_to_state_dict": "onnx_import",
    "read_onnx_checkpoint": "onnx_import",
    "PRETRAINED": "pretrained",
    "PretrainedCfg": "pretrained",
    "WeightsDownloadError": "pretrained",
    "WeightsMismatchError": "pretrained",
    "download_weights": "pretrained",
    "get_pretrained_cfg": "pretrained",
    "list_pretrained": "pretrained",
    "is_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "infer_architecture": "state_dict",
    "load_state_dict": "state_dict",
    "RSU": "u2net",
    "U2NET_STAGES": "u2net",
    "U2NETP_STAGES": "u2net",
    "StageSpec": "u2net",
    "U2Net": "u2net",
    "load_weights": "weights",
    "read_checkpoint": "weights",
}
# Submodules that were attributes of the package once it was imported (it used to import them all).
_SUBMODULES = frozenset(_SOURCES.values())


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES, _SUBMODULES, __all__)
