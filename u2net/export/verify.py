"""Checking an exported file: the ONNX checker, then ONNX Runtime against the PyTorch model in float64."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing, normalize_array
from ..inference.runtime import onnx_session
from ..models.onnx_format import proto_metadata, require_onnx
from .onnx import ExportWrapper

__all__ = ["FP16_ATOL", "synthetic_image", "verify_onnx"]

# fp16 files: largest difference in probability from the float64 reference that verify_onnx accepts.
FP16_ATOL = 1e-2


def synthetic_image(size: int | tuple[int, int] = 320, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like H×W×3 uint8 test image: a lit gradient background and two soft-edged objects."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / max(h - 1, 1), xx / max(w - 1, 1)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    tilt = rng.uniform(-60, 60, 3).astype(np.float32)
    image = base + tilt * (0.6 * xx + 0.4 * yy)[..., None]
    image += 12 * np.sin(2 * np.pi * (1.5 * xx + 0.7 * yy))[..., None]  # low-frequency texture
    for _ in range(2):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.1, 0.3, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        alpha = np.clip((1.0 - inside) * 8.0, 0.0, 1.0)[..., None]  # soft edge
        colour = rng.uniform(0, 255, 3).astype(np.float32) * (1.0 - 0.3 * yy[..., None])  # shaded object
        image = image * (1 - alpha) + colour * alpha
    return np.clip(image, 0, 255).astype(np.uint8)


def _preprocess(image: np.ndarray, meta: Mapping) -> np.ndarray:
    """H×W×3 uint8 -> 3×H×W float32, normalised as the metadata says (no resize: the image has the input's size)."""
    prep = Preprocessing.from_metadata(meta) or Preprocessing()
    return normalize_array(image, prep.mean, prep.std, prep.normalization)


def _is_fp16(proto) -> bool:
    float16 = 10  # onnx.TensorProto.FLOAT16
    return any(t.data_type == float16 for t in proto.graph.initializer)


def verify_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    input_size: int | tuple[int, int] | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> dict:
    """Check an exported file: the ONNX checker, then ONNX Runtime against PyTorch.

    Two inputs (a random normal tensor, and :func:`synthetic_image` preprocessed as the metadata says) at the
    graph's size (or ``input_size``, or the metadata's ``image_size``). For each, every output is compared
    with the ``model`` run in float32 (``max_abs_diff``) and in float64 (``onnx_vs_float64``,
    ``torch_vs_float64``). A float32 file passes when ONNX Runtime's error against float64 is at most twice
    PyTorch float32's own error + 1e-6; fp16 files (or any file when ``atol`` is given) when the error against
    float64 is at most ``atol`` (default :data:`FP16_ATOL`). Returns the numbers and ``ok``.
    """
    onnx = require_onnx()
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    fp16 = _is_fp16(proto)
    meta = proto_metadata(proto)
    del proto
    session = onnx_session(path, ["CPUExecutionProvider"], spinning=False, quiet=True)
    model_input = session.get_inputs()[0]
    n_outputs = len(session.get_outputs())
    _, in_ch, height, width = model_input.shape
    if isinstance(height, int) and isinstance(width, int):
        size = (height, width)
    else:
        size = input_size or meta.get("image_size") or 320
        size = (size, size) if isinstance(size, int) else tuple(size)
    in_ch = in_ch if isinstance(in_ch, int) else 3
    if atol is None and fp16:
        atol = FP16_ATOL

    rng = np.random.default_rng(seed)
    inputs = {
        "random": rng.standard_normal((1, in_ch, *size)).astype(np.float32),
        "image": _preprocess(synthetic_image(size, seed), meta)[None],
    }
    report: dict = {"checker": "ok", "precision": "fp16" if fp16 else "fp32", "outputs": n_outputs, "size": size}
    ok = True
    was_training = model.training
    try:
        cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
        fused_only = n_outputs == 1
        wrapper32 = ExportWrapper(cpu, fused_only).eval()
        wrapper64 = ExportWrapper(copy.deepcopy(cpu).double(), fused_only).eval()
        for label, x in inputs.items():
            ort_out = session.run(None, {model_input.name: x})
            with torch.no_grad():
                t32 = _as_tuple(wrapper32(torch.from_numpy(x)))
                t64 = _as_tuple(wrapper64(torch.from_numpy(x).double()))
            diff = max(float(np.abs(o - t.numpy()).max()) for o, t in zip(ort_out, t32))
            err_onnx = max(float(np.abs(o.astype(np.float64) - t.numpy()).max()) for o, t in zip(ort_out, t64))
            err_torch = max(float((a.double() - b).abs().max()) for a, b in zip(t32, t64))
            bound = atol if atol is not None else 2 * err_torch + 1e-6
            passed = err_onnx <= bound
            ok &= passed
            report[label] = {
                "max_abs_diff": diff,
                "onnx_vs_float64": err_onnx,
                "torch_vs_float64": err_torch,
                "bound": bound,
                "ok": passed,
            }
    finally:
        model.train(was_training)
    report["ok"] = ok
    return report


def _as_tuple(outputs) -> tuple:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
