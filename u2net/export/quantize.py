"""int8 quantisation of an exported file (dynamic, or static with calibration images), and what it costs.

:func:`compare_accuracy` measures the loss against the float32 file (and ground truth) and the speed of both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..inference.predictor import resize_probability
from ..inference.runtime import median_seconds, onnx_session
from ..metrics import SaliencyMetrics, probabilities_to_uint8
from ..models.onnx_format import read_onnx_metadata, require_onnx, set_metadata, write_onnx

__all__ = [
    "DEFAULT_MIN_SQNR_DB",
    "coarse_int8_convolutions",
    "compare_accuracy",
    "quantize_dynamic_int8",
    "quantize_static_int8",
]

# Convolutions whose int8 input would give the median channel a lower signal-to-noise ratio (dB) stay float (see
# coarse_int8_convolutions). The official u2netp has one (19 dB, with 32 or 128 calibration photos; the next
# lowest outside the float head has 25): quantised anyway, it is off by 0.059 mean absolute probability on real
# photos, and about 0.001 with that convolution kept float.
DEFAULT_MIN_SQNR_DB = 22.0
# The quantised graph's per-channel DequantizeLinear (its ``axis``) needs opset 13: older files are converted.
QDQ_MIN_OPSET = 13


@contextlib.contextmanager
def _scratch(dst: Path) -> Iterator[Path]:
    """A temporary folder beside ``dst`` for the quantiser's intermediate files (each as large as the model)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as folder:
        yield Path(folder)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantiser: it logs a line per tensor on the root logger, and warns."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _finish(quantized: Path, src: Path, dst: Path, precision: str, **metadata) -> Path:
    """Write ``quantized`` to ``dst`` (atomically) with the metadata of ``src``, the new ``precision`` and
    ``metadata``."""
    proto = require_onnx().load(str(quantized))
    set_metadata(proto, {**read_onnx_metadata(src), "precision": precision, **metadata})
    return write_onnx(proto, dst)


def _preprocessed_for_quantization(src: Path, tmp: Path) -> None:
    """Shape inference and ONNX Runtime's basic graph optimisations (BatchNorm folding among them), on the
    graph converted to opset :data:`QDQ_MIN_OPSET` first if older (rembg's files are opset 11)."""
    from onnxruntime.quantization import quant_pre_process

    onnx = require_onnx()
    proto = onnx.load(str(src))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), QDQ_MIN_OPSET)
    if opset < QDQ_MIN_OPSET:
        from onnx import version_converter

        src = tmp.with_name(f"opset{QDQ_MIN_OPSET}.onnx")
        onnx.save(version_converter.convert_version(proto, QDQ_MIN_OPSET), str(src))
    quant_pre_process(str(src), str(tmp), skip_symbolic_shape=True)


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = False) -> Path:
    """Dynamic int8 quantisation: weights stored as int8, activations quantised on the fly per tensor.

    ONNX Runtime turns each Conv into ConvInteger (uint8 activations and weights) + a float rescale. No
    calibration data is needed, but on CPU it is slower than float32 for U²-Net (see the export report);
    :func:`quantize_static_int8` is the better choice when images are at hand.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with _scratch(dst) as folder:
        pre, out = folder / "pre.onnx", folder / "int8.onnx"
        _preprocessed_for_quantization(src, pre)
        with _quiet():
            quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QUInt8)
        return _finish(out, src, dst, "int8-dynamic")


class _ArrayReader:
    """CalibrationDataReader over preprocessed 3×S×S images, one per batch; ``set_range`` lets ONNX Runtime
    calibrate a few images at a time (``CalibStridedMinMax``) instead of holding every activation of every image."""

    def __init__(self, input_name: str, images: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.images))

    def get_next(self):
        if self._next >= self._end:
            return None
        image = self.images[self._next]
        self._next += 1
        return {self.input_name: np.ascontiguousarray(image[None], dtype=np.float32)}


def quantize_static_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration_images: Sequence[np.ndarray],
    per_channel: bool = True,
    method: str = "minmax",
    float_head: bool = True,
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB,
) -> Path:
    """Static int8 quantisation in QDQ format: int8 weights (per output channel by default) and uint8
    activations whose ranges come from ``calibration_images`` (preprocessed 3×S×S float32 arrays, as the
    model sees them). ``method``: ``minmax``, ``percentile`` or ``entropy`` (ONNX Runtime's calibrators;
    MinMax was as accurate as percentile on U²-Net and four times faster to calibrate). ``float_head`` keeps the
    last convolutions, the side-output upsampling and the sigmoids in float, so the probabilities are not
    rounded to 1/255 steps. Convolutions whose int8 input would be coarse (:func:`coarse_int8_convolutions`,
    ``min_sqnr_db``; 0 quantises all) stay float too.

    On an AVX-512-VNNI CPU this ran the official u2netp 2× faster than float32 at 320² (62-66 against 125-130
    ms), about 0.001 from it in mean absolute probability on real photos.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    if len(calibration_images) == 0:
        raise ValueError("static quantisation needs at least one calibration image")
    src, dst = Path(src), Path(dst)
    input_name = onnx_session(src, ["CPUExecutionProvider"], quiet=True).get_inputs()[0].name
    with _scratch(dst) as folder:
        pre, out = folder / "pre.onnx", folder / "int8.onnx"
        _preprocessed_for_quantization(src, pre)
        coarse = coarse_int8_convolutions(pre, calibration_images, min_sqnr_db) if min_sqnr_db > 0 else []
        with _quiet():
            quantize_static(
                str(pre),
                str(out),
                _ArrayReader(input_name, calibration_images),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=[*(_output_head(pre) if float_head else []), *coarse],
                # one image at a time: memory stays at one image's activations (U²-Net: ~1 GB at 320²)
                extra_options={"CalibStridedMinMax": 1},
            )
        return _finish(out, src, dst, "int8-static", float_nodes=coarse)


def _conv_input_sqnr(path: Path, images: Sequence[np.ndarray]) -> dict[str, float]:
    """Per convolution (node name): the median over its input channels of the signal-to-quantisation-noise
    ratio (dB) that uint8 with one scale for the whole input (MinMax range over ``images``) would give."""
    onnx = require_onnx()
    proto = onnx.load(str(path))
    graph = proto.graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    tensors = list(dict.fromkeys(node.input[0] for node in convs))
    have = {value.name for value in (*graph.input, *graph.output)}
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in have)
    session = onnx_session(proto.SerializeToString(), ["CPUExecutionProvider"], quiet=True)
    input_name, names = session.get_inputs()[0].name, [output.name for output in session.get_outputs()]
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    low, high = dict.fromkeys(tensors, 0.0), dict.fromkeys(tensors, 0.0)  # the range always holds 0
    for image in images:
        feed = {input_name: np.ascontiguousarray(image[None], dtype=np.float32)}
        values = {**dict(zip(names, session.run(None, feed))), **feed}
        for tensor in tensors:
            value = values[tensor]
            channels = value.swapaxes(0, 1).reshape(value.shape[1], -1)
            squares[tensor] = squares.get(tensor, 0.0) + np.square(channels, dtype=np.float64).sum(axis=1)
            counts[tensor] = counts.get(tensor, 0) + channels.shape[1]
            low[tensor], high[tensor] = min(low[tensor], float(value.min())), max(high[tensor], float(value.max()))
    sqnr = {}
    for tensor in tensors:
        noise = ((high[tensor] - low[tensor]) / 255) ** 2 / 12  # uniform rounding error of one uint8 step
        power = squares[tensor][squares[tensor] > 0] / counts[tensor]  # dead channels carry nothing to lose
        sqnr[tensor] = float(np.median(10 * np.log10(power / noise))) if noise > 0 and power.size else np.inf
    return {node.name: sqnr[node.input[0]] for node in convs}


def coarse_int8_convolutions(
    path: str | os.PathLike, images: Sequence[np.ndarray], min_sqnr_db: float = DEFAULT_MIN_SQNR_DB
) -> list[str]:
    """The convolutions of an ONNX file whose input int8 would resolve too coarsely, and the nodes that produce
    those inputs (they must stay float too, or the input is rounded before the convolution sees it). The int8
    file lists them in its metadata (``float_nodes``).

    ONNX Runtime quantises an activation with one scale for all its channels. When one channel is far larger than
    the rest, the others get a few of the 255 steps: coarse means that over ``images`` (preprocessed 3×S×S
    float32 arrays) the median channel's signal-to-quantisation-noise ratio is under ``min_sqnr_db``.
    """
    path = Path(path)
    graph = require_onnx().load(str(path)).graph
    producer = {output: node for node in graph.node for output in node.output}
    inputs = {node.name: node.input[0] for node in graph.node if node.op_type == "Conv"}
    nodes: list[str] = []
    for conv, sqnr in _conv_input_sqnr(path, images).items():
        if sqnr < min_sqnr_db:
            source = producer.get(inputs[conv])
            nodes += [conv, *([source.name] if source is not None else [])]
    return list(dict.fromkeys(nodes))


def _output_head(path: Path) -> list[str]:
    """Names of the nodes between the last convolutions and the outputs, these convolutions included
    (the side/fused convolutions, the side upsampling and the sigmoids)."""
    onnx = require_onnx()
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    head: list[str] = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.name not in head:
            head.append(node.name)
            if node.op_type == "Conv":
                break
            node = producer.get(node.input[0])
    return head


def _graph_size(session, default: tuple[int, int]) -> tuple[int, int]:
    _, _, height, width = session.get_inputs()[0].shape
    return (height, width) if isinstance(height, int) and isinstance(width, int) else default


def _latency_ms(session, size: tuple[int, int], runs: int) -> float:
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, *_graph_size(session, size))).astype(np.float32)
    return 1000 * median_seconds(lambda: session.run(None, {name: x}), runs)


def compare_accuracy(
    fp32_path: str | os.PathLike,
    quant_path: str | os.PathLike,
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray] | None = None,
    latency_runs: int = 10,
    latency_size: int = 320,
) -> dict:
    """How much a quantised (or fp16) file loses against its float32 original.

    ``images``: preprocessed 3×S×S float32 arrays; ``gts``: their ground-truth masks (H×W, uint8 or float in
    [0, 1], any size: predictions are resized to them) or ``None``. Returns the mean and max absolute
    difference between the fused probability maps, the max F-measure and MAE of each model against the ground
    truth, the median latency of each at ``latency_size``² (batch 1; the graph's own size if fixed) and file sizes.
    """
    ref, quant = (onnx_session(p, ["CPUExecutionProvider"], quiet=True) for p in (fp32_path, quant_path))
    name_ref, name_quant = ref.get_inputs()[0].name, quant.get_inputs()[0].name
    metrics = {"fp32": SaliencyMetrics(), "quant": SaliencyMetrics()}
    abs_sum, abs_max, count = 0.0, 0.0, 0
    for i, image in enumerate(images):
        x = np.ascontiguousarray(image[None], dtype=np.float32)
        p_ref = np.clip(ref.run(None, {name_ref: x})[0][0, 0], 0, 1)
        p_quant = np.clip(quant.run(None, {name_quant: x})[0][0, 0], 0, 1)
        diff = np.abs(p_ref.astype(np.float64) - p_quant)
        abs_sum, abs_max, count = abs_sum + float(diff.mean()), max(abs_max, float(diff.max())), count + 1
        if gts is not None:
            gt = np.asarray(gts[i])
            gt_u8 = gt if gt.dtype == np.uint8 else probabilities_to_uint8(np.clip(gt, 0, 1))
            for key, prob in (("fp32", p_ref), ("quant", p_quant)):
                metrics[key].update(probabilities_to_uint8(resize_probability(prob, gt_u8.shape)), gt_u8)
    report: dict = {
        "n_images": count,
        "mae_vs_fp32": abs_sum / max(count, 1),
        "max_abs_vs_fp32": abs_max,
    }
    if gts is not None and count:
        for key in ("fp32", "quant"):
            scores = metrics[key].results()
            report[f"max_f_{key}"], report[f"mae_{key}"] = scores["max_f"], scores["mae"]
    if latency_runs > 0:
        size = _graph_size(ref, (latency_size, latency_size))
        report["latency_size"] = list(size)
        report["latency_ms_fp32"] = _latency_ms(ref, size, latency_runs)
        report["latency_ms_quant"] = _latency_ms(quant, size, latency_runs)
    report["size_mb_fp32"] = Path(fp32_path).stat().st_size / 2**20
    report["size_mb_quant"] = Path(quant_path).stat().st_size / 2**20
    return report
