"""The ONNX Runtime backend of :class:`~u2net.inference.Predictor`, beside the PyTorch one
(:mod:`~u2net.inference.torch_backend`), and reading an ONNX file's image input. Imports no torch: this is the
``u2net`` command's default path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import one_line
from .runtime import onnx_session, pick_providers

__all__ = ["OnnxBackend", "symbolic_batch_dim"]

# Execution providers (by name prefix) that compute on a GPU: CUDA, TensorRT, ROCm.
_GPU_PROVIDER_PREFIXES = ("CUDA", "Tensorrt", "ROCM")
# What ONNX Runtime puts before each of its messages ("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : "): the error's
# class says as much.
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
# How ONNX Runtime says that a file parsed but holds no model (an empty file does): given bytes, given a path.
_NO_GRAPH = ("No graph was found", "does not have a graph")


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
        # Both sessions below open the bytes read once: the model whose input was read is the one that runs,
        # whatever happens to the file meanwhile (its external data, weights in files beside it, is found there).
        model = Path(path).read_bytes()
        on_cpu = wanted[:1] == ["CPUExecutionProvider"]
        # On the CPU a batch runs no faster than its images one after another, and a symbolic batch
        # dimension keeps ONNX Runtime from folding the graph's shape arithmetic and from running the
        # up-sampling in its blocked (NCHWc) layout: with it fixed to 1, U²-Net runs 6–10 % faster. ONNX Runtime
        # fixes a dimension by name only as it opens a model, so a bare session reads the name first (a fifth to a
        # third of the full one's start-up), and refuses a file without an image input before that one is built.
        batch_name = None
        if on_cpu:
            batch_name = _batch_name(_image_input(_open(model, path, wanted[:1], bare=True), path))
        fixed = {batch_name: 1} if batch_name else None
        self.session = _open(model, path, wanted, precision=precision, fixed_dims=fixed)
        self.precision: str = precision
        model_input = _image_input(self.session, path)
        self.input_name: str = model_input.name
        batch_dim, _, height, width = model_input.shape
        self.max_batch: int | None = batch_dim if isinstance(batch_dim, int) else None  # 1 where fixed above
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


def _open(model: bytes, source: str | os.PathLike, providers: list[str], **options):
    """:func:`~u2net.inference.runtime.onnx_session` for the bytes ``model`` of the file ``source``, ONNX Runtime's
    refusal of it as one line naming it."""
    try:
        return onnx_session(model, providers, data_folder=Path(source).parent, **options)
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise  # ours (a precision without its provider: one line already) or Python's
        message = _ORT_PREFIX.sub("", one_line(exc))
        unreadable = type(exc).__name__ == "InvalidProtobuf" or any(m in message for m in _NO_GRAPH)
        what = "not a readable ONNX file" if unreadable else "ONNX Runtime cannot run it"
        raise ValueError(f"{source}: {what} ({type(exc).__name__}: {message})") from None


def _image_input(session, source: str | os.PathLike):
    """The session's image input (its first), when it takes N×3×H×W (symbolic sizes allowed); one line naming
    ``source`` and what the file takes otherwise."""
    inputs = session.get_inputs()
    if not inputs:
        raise ValueError(f"{source}: expects an image input N×3×H×W; this file has no input")
    first = inputs[0]
    tensor = first.type.startswith("tensor(")
    shape = first.shape if tensor else []
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        shown = "×".join("?" if d is None else str(d) for d in shape)  # ONNX Runtime: a name, a size or None
        raise ValueError(
            f"{source}: expects an image input N×3×H×W; this file's input {first.name!r} is "
            f"{shown or ('a tensor of unknown rank' if tensor else first.type)}"
        )
    return first


def _batch_name(model_input) -> str | None:
    """The name of an input's symbolic first axis (ONNX Runtime shows it so), if it has one."""
    first = model_input.shape[0] if model_input.shape else None
    return first if isinstance(first, str) else None


def symbolic_batch_dim(model_bytes: bytes) -> str | None:
    """The name of an ONNX model's symbolic batch dimension (first input, first axis), if it has one."""
    inputs = _open(model_bytes, "model", ["CPUExecutionProvider"], bare=True).get_inputs()
    return _batch_name(inputs[0]) if inputs else None
