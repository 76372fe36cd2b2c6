"""The ONNX Runtime backend of :class:`~u2net.inference.Predictor`, beside the PyTorch one
(:mod:`~u2net.inference.torch_backend`), and reading an ONNX file's image input. Imports no torch: this is the
``u2net`` command's default path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import one_line
from .runtime import onnx_session, pick_providers

__all__ = ["OnnxBackend", "symbolic_batch_dim"]

# Execution providers (by name prefix) that compute on a GPU: CUDA, TensorRT, ROCm.
_GPU_PROVIDER_PREFIXES = ("CUDA", "Tensorrt", "ROCM")


class OnnxBackend:
    """Runs an ONNX U²-Net (ours, or rembg's u2net/u2netp/u2net_human_seg) with ONNX Runtime.

    Output 0 is taken as the mask. Files that output logits instead of probabilities are detected
    (values outside [0, 1]) and passed through a sigmoid. Satisfies
    :class:`~u2net.inference.predictor.InferenceBackend`; ``providers`` are the execution providers in use
    (first: the one that computes), ``metadata`` the file's metadata map.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, precision: str = "fp32") -> None:
        """``precision``: fp32, or fp16/bf16 on the OpenVINO provider (see
        :func:`~u2net.inference.runtime.provider_options`)."""
        wanted = pick_providers(providers)
        if not wanted:
            raise ValueError(f"none of the ONNX Runtime providers {', '.join(providers or ())} is available here")
        model_bytes = Path(path).read_bytes()
        graph = _parse_onnx(model_bytes, path)  # external data (if any) is not read here
        dims = _image_input_dims(graph, path)
        batch_name = dims[0].dim_param or None
        on_cpu = wanted[:1] == ["CPUExecutionProvider"]
        # On the CPU a batch runs no faster than its images one after another, and a symbolic batch
        # dimension keeps ONNX Runtime from folding the graph's shape arithmetic and from running the
        # up-sampling in its blocked (NCHWc) layout: with it fixed to 1, U²-Net runs 6–10 % faster.
        fixed = {batch_name: 1} if batch_name and on_cpu else None
        # Weights in files beside the model (external data) are found relative to the model's own path: ONNX
        # Runtime refuses them for a model given as bytes, so such a file is opened by path.
        model = str(path) if _has_external_data(graph) else model_bytes
        self.session = onnx_session(model, wanted, precision=precision, fixed_dims=fixed)
        self.precision: str = precision
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        batch_dim, _, height, width = model_input.shape
        self.max_batch: int | None = 1 if batch_name and on_cpu else batch_dim if isinstance(batch_dim, int) else None
        self.fixed_size: int | None = height if isinstance(height, int) and height == width else None
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.providers: list[str] = self.session.get_providers()

    @property
    def on_gpu(self) -> bool:
        """Whether its first execution provider (the one that computes) runs on a GPU: CUDA, TensorRT or ROCm."""
        return bool(self.providers) and self.providers[0].startswith(_GPU_PROVIDER_PREFIXES)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N×3×S×S float32 normalised images -> N×S×S float32 probabilities."""
        step = self.max_batch or len(batch)
        outputs = [
            self.session.run(None, {self.input_name: batch[i : i + step]})[0] for i in range(0, len(batch), step)
        ]
        probs = np.concatenate(outputs)[:, 0].astype(np.float32)
        if probs.size and (probs.min() < 0 or probs.max() > 1):
            probs = 1.0 / (1.0 + np.exp(-probs))
        return probs


def _parse_onnx(model_bytes: bytes, source: str | os.PathLike):
    """The ONNX model in ``model_bytes`` (read from ``source``), without any external data."""
    import onnx

    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:
        raise ValueError(f"{source}: not a readable ONNX file ({type(exc).__name__}: {one_line(exc)})") from None


def _has_external_data(model) -> bool:
    """Whether any initializer keeps its values in a file beside the model (``save_as_external_data=True``)."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _graph_inputs(model) -> list:
    """The model's inputs that are fed (old exporters list the initializers among the inputs too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _image_input_dims(model, source: str | os.PathLike) -> list:
    """The dimensions of the model's image input (its first input that is no initializer), when it takes
    N×3×H×W (symbolic sizes allowed); one line naming ``source`` and what the file takes otherwise."""
    inputs = _graph_inputs(model)
    if not inputs:
        raise ValueError(f"{source}: expects an image input N×3×H×W; this file has no input")
    first = inputs[0]
    dims = list(first.type.tensor_type.shape.dim)
    shown = "×".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in dims)
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise ValueError(
            f"{source}: expects an image input N×3×H×W; this file's input {first.name!r} is "
            f"{shown or 'a tensor of unknown rank'}"
        )
    return dims


def symbolic_batch_dim(model_bytes: bytes) -> str | None:
    """The name of an ONNX model's symbolic batch dimension (first input, first axis), if it has one."""
    inputs = _graph_inputs(_parse_onnx(model_bytes, "model"))
    dims = inputs[0].type.tensor_type.shape.dim if inputs else ()
    return (dims[0].dim_param or None) if dims else None
