"""ONNX export of U²-Net (fp32, fp16): :func:`export_onnx` and the module that defines what a file computes.

Exported files have one float32 input ``"input"`` (N×3×H×W, normalised like validation: see the metadata)
and float32 *probabilities* (sigmoid applied) as outputs: the fused map ``d0`` first, then the side outputs
``d1``..``d6`` (or one output ``mask`` with ``fused_only``). That is the layout of rembg's ``u2net.onnx``, which
rembg's ``u2net_custom`` session and other ONNX-Runtime apps read (output 0, 320×320).

The metadata is described in :mod:`u2net.models.onnx_format`; verification is in :mod:`u2net.export.verify`,
int8 quantisation in :mod:`u2net.export.quantize`, and import back into PyTorch in
:mod:`u2net.models.onnx_import`.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..data.preprocessing import Preprocessing
from ..models.onnx_format import require_onnx, set_metadata, topological_nodes, write_onnx

__all__ = ["FUSED_ONLY_NAME", "INPUT_NAME", "ExportWrapper", "export_onnx"]

INPUT_NAME = "input"
FUSED_ONLY_NAME = "mask"


class ExportWrapper(nn.Module):
    """What an exported file computes: the model's outputs through a sigmoid, fused first.

    ``fused_only=True`` returns the fused probability map alone (one output).
    """

    def __init__(self, model: nn.Module, fused_only: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fused_only = fused_only

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.model(x)
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if self.fused_only:
            return torch.sigmoid(outputs[0])
        return tuple(torch.sigmoid(o) for o in outputs)


def _output_count(model: nn.Module, in_ch: int) -> int:
    depth = getattr(model, "depth", None)
    if isinstance(depth, int):
        return depth + 1
    param = next(model.parameters())
    with torch.no_grad():
        outputs = model(torch.zeros(1, in_ch, 32, 32, device=param.device, dtype=param.dtype))
    return 1 if isinstance(outputs, torch.Tensor) else len(outputs)


def _export_proto(
    model: nn.Module, input_size: int, opset: int, dynamic_hw: bool, fused_only: bool, fold_batchnorm: bool
):
    onnx = require_onnx()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    in_ch = int(getattr(model, "in_ch", 3))
    names = [FUSED_ONLY_NAME] if fused_only else [f"d{i}" for i in range(_output_count(model, in_ch))]
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    device = next(model.parameters()).device
    dummy = torch.randn(1, in_ch, input_size, input_size, device=device)
    was_training = model.training
    wrapper = ExportWrapper(model, fused_only).eval()
    buffer = io.BytesIO()
    # EVAL folds BatchNorm into the convolutions (with constant folding); PRESERVE on an eval-mode model keeps
    # the BatchNormalization nodes with their running statistics.
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based exporter"
            warnings.filterwarnings("ignore", message=".*constant folding.*")
            torch.onnx.export(
                wrapper,
                (dummy,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={name: axes for name in [INPUT_NAME, *names]},
                opset_version=opset,
                do_constant_folding=True,
                training=mode,
                dynamo=False,
            )
    finally:
        model.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def _default_metadata(model: nn.Module, input_size: int) -> dict:
    meta = {"model_name": getattr(model, "model_name", type(model).__name__).lower()}
    meta.update(Preprocessing().to_dict())
    meta["image_size"] = input_size
    if getattr(model, "model_args", None) is not None:
        meta["model_args"] = model.model_args
    meta["u2net_version"] = __version__
    return meta


def _to_fp16(proto):
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:  # pragma: no cover - ships with onnxruntime
        raise RuntimeError("fp16 export needs onnxruntime's float16 converter (onnxruntime>=1.10)") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values clamped to the fp16 range
        proto = convert_float_to_float16(proto, keep_io_types=True)
    _sort_topologically(proto.graph)  # the converter appends the input casts at the end of the graph
    return proto


def _sort_topologically(graph) -> None:
    """Reorder ``graph.node`` so that every node comes after the producers of its inputs (stable)."""
    copies = []
    for node in topological_nodes(graph):
        copy_ = type(node)()
        copy_.CopyFrom(node)
        copies.append(copy_)
    del graph.node[:]
    graph.node.extend(copies)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int = 320,
    opset: int = 17,
    dynamic_hw: bool = False,
    fused_only: bool = False,
    metadata: Mapping | None = None,
    fp16: bool = False,
    fold_batchnorm: bool = True,
) -> Path:
    """Export ``model`` (a U²-Net returning logits) to ``path`` as ONNX and return the path.

    The file has a dynamic batch dimension and, with ``dynamic_hw``, dynamic height and width (``input_size``
    is then the recommended size, stored as ``image_size``). ``fp16`` stores weights and computes in float16
    but keeps float32 input and outputs. ``fold_batchnorm=False`` keeps the BatchNormalization nodes (ONNX
    Runtime fuses them when it loads the file, so speed is the same), which makes the import exact.
    ``metadata`` adds or overrides metadata entries (e.g. the preprocessing stored in a checkpoint).

    The file is written to a temporary file beside ``path`` and renamed, so no half-written file is ever left.
    """
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    path = Path(path)
    proto = _export_proto(model, int(input_size), int(opset), dynamic_hw, fused_only, fold_batchnorm)
    if fp16:
        proto = _to_fp16(proto)
    meta = _default_metadata(model, int(input_size))
    meta.update(dict(metadata or {}))
    meta.update(
        image_size=int(input_size),
        precision="fp16" if fp16 else "fp32",
        outputs="probabilities",
        output_names=[o.name for o in proto.graph.output],
        dynamic_hw=bool(dynamic_hw),
        batchnorm="folded" if fold_batchnorm else "kept",
    )
    set_metadata(proto, meta)
    proto.producer_name, proto.producer_version = "u2net", __version__
    proto.doc_string = "U²-Net: input N×3×H×W normalised image; outputs probabilities, fused first"
    return write_onnx(proto, path)
