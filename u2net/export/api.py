"""export_onnx.py's task: export a model to ONNX, verify the file, and for int8 report what it costs."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..data import read_image, read_mask
from ..data.transforms import Preprocessing, eval_transform
from ..models import load_checkpoint
from ..models.checkpoint import resolve_weights
from ..models.onnx_format import read_onnx_metadata
from ..models.pretrained import pretrained_tag, sha256_of
from .onnx import export_onnx
from .quantize import compare_accuracy, quantize_dynamic_int8, quantize_static_int8
from .verify import verify_onnx

INT8_MODES = ("dynamic", "static")
PairsOf = Callable[[str], list]  # dataset name -> its (image, mask) pairs


class VerificationError(ValueError):
    """The exported file does not compute what the PyTorch model computes."""


def check_arguments(cfg: Any) -> Path:
    """The output path, once the options (export.yaml's) are known to make sense (before any slow work)."""
    if not cfg.weights:
        raise ValueError("nothing to export: give weights=PATH (a checkpoint, .pth, pretrained tag or .onnx)")
    if not cfg.output:
        raise ValueError("give output=FILE.onnx (the file to write)")
    output = Path(cfg.output).expanduser()
    if output.suffix.lower() != ".onnx":
        raise ValueError(f"{output}: the output file name must end in .onnx")
    if output.exists() and not cfg.overwrite:
        raise FileExistsError(f"{output}: already exists (pass overwrite=true to replace it)")
    if cfg.int8 is not None and cfg.int8 not in INT8_MODES:
        raise ValueError(f"int8 must be null, dynamic or static, got {cfg.int8!r}")
    if cfg.fp16 and cfg.int8:
        raise ValueError("choose fp16=true or int8=..., not both")
    if int(cfg.input_size) < 1:
        raise ValueError(f"input_size must be positive, got {cfg.input_size}")
    if pretrained_tag(cfg.weights) is None and not Path(cfg.weights).expanduser().exists():
        raise FileNotFoundError(f"{cfg.weights}: weights file not found")
    return output


def load_for_export(weights: str) -> tuple[nn.Module, Preprocessing, dict]:
    """The model in eval mode, its preprocessing and the metadata naming where it came from."""
    checkpoint = load_checkpoint(weights)  # a pretrained tag: downloaded into the cache, its catalogue preprocessing
    model = checkpoint.build_model()
    preprocessing = checkpoint.preprocessing or Preprocessing()
    path = resolve_weights(weights)  # the file load_checkpoint read: a tag's cached or bundled one
    metadata = {k: v for k, v in preprocessing.to_dict().items() if k != "image_size"}
    metadata.update(model_name=model.model_name, source_weights=path.name, weights_sha256=sha256_of(path))
    return model, preprocessing, metadata


def input_size_note(weights: str, validated_at: int, input_size: int) -> str | None:
    """A warning when the file would take another size than the model was validated at."""
    if validated_at == input_size:
        return None
    return (
        f"note: {weights} was validated at {validated_at}², the file takes {input_size}² (rembg always feeds "
        f"320²); our tools then predict at {input_size}², which may differ from the checkpoint's results; "
        f"input_size={validated_at} exports at the validation size"
    )


def print_verification(report: dict) -> None:
    """One line: each check's error against float64 and its bound, then ok or FAILED."""
    parts = [
        f"{label}: max |onnx - torch| {r['max_abs_diff']:.2e}, vs float64 onnx {r['onnx_vs_float64']:.2e} "
        f"torch {r['torch_vs_float64']:.2e} (bound {r['bound']:.2e})"
        for label, r in report.items()
        if isinstance(r, dict)
    ]
    size = "×".join(str(s) for s in report["size"])
    status = "ok" if report["ok"] else "FAILED"
    print(f"verify ({report['precision']}, {size}): onnx checker ok; " + "; ".join(parts) + f" -> {status}")


def verify(path: Path, model: nn.Module, input_size: int, output: str) -> None:
    """Check ``path`` against ``model``; raises :class:`VerificationError` when it computes something else."""
    report = verify_onnx(path, model, input_size)
    print_verification(report)
    if not report["ok"]:
        checks = [r for r in report.values() if isinstance(r, dict)]
        worst = max(checks, key=lambda r: r["onnx_vs_float64"] / r["bound"])
        raise VerificationError(
            f"ONNX Runtime disagrees with PyTorch (error {worst['onnx_vs_float64']:.2e} against float64 is over "
            f"the bound {worst['bound']:.2e}); {output} was not written (verify=false writes it anyway)"
        )


def sample_images(pairs: list, preprocessing: Preprocessing, calibration: int, report: int) -> tuple[list, list, list]:
    """Preprocessed calibration images, and separate report images with their masks, drawn from ``pairs``."""
    order = np.random.default_rng(0).permutation(len(pairs))
    calib_pairs = [pairs[i] for i in order[:calibration]]
    report_pairs = [pairs[i] for i in order[calibration : calibration + report]] or calib_pairs[:report]
    transform = eval_transform(**preprocessing)

    def prepare(image_path) -> np.ndarray:
        image = read_image(image_path)
        return transform(image, np.zeros(image.shape[:2], np.float32))[0].numpy()

    calib_images = [prepare(image) for image, _ in calib_pairs]
    report_images = [prepare(image) for image, _ in report_pairs]
    report_masks = [read_mask(mask) for _, mask in report_pairs]
    return calib_images, report_images, report_masks


def print_int8_report(report: dict, mode: str, dataset: str, calibrated: int) -> None:
    """The int8 file against the fp32 one: a small two-column table."""
    how = f"static, {calibrated} calibration image(s)" if mode == "static" else "dynamic"
    print(f"int8 ({how}) against fp32 on {report['n_images']} {dataset} image(s):")
    rows = [("", "fp32", "int8")]
    rows.append(("MAE vs fp32", "-", f"{report['mae_vs_fp32']:.5f}"))
    rows.append(("max |diff| vs fp32", "-", f"{report['max_abs_vs_fp32']:.4f}"))
    if "max_f_fp32" in report:
        rows.append(("max F", f"{report['max_f_fp32']:.4f}", f"{report['max_f_quant']:.4f}"))
        rows.append(("MAE vs ground truth", f"{report['mae_fp32']:.4f}", f"{report['mae_quant']:.4f}"))
    if "latency_ms_fp32" in report:
        size = "×".join(str(s) for s in report["latency_size"])
        rows.append((f"latency {size} (ms)", f"{report['latency_ms_fp32']:.1f}", f"{report['latency_ms_quant']:.1f}"))
    rows.append(("file size (MB)", f"{report['size_mb_fp32']:.2f}", f"{report['size_mb_quant']:.2f}"))
    width = max(len(r[0]) for r in rows)
    for label, a, b in rows:
        print(f"  {label:<{width}}  {a:>10}  {b:>10}")


def _int8(fp32: Path, final: Path, cfg: Any, preprocessing: Preprocessing, pairs_of: PairsOf) -> dict:
    """Quantise ``fp32`` into ``final`` as ``cfg.int8`` says; returns the accuracy/speed report."""
    dataset = str(cfg.calibration.dataset)
    pairs = pairs_of(dataset)
    if not pairs:
        raise ValueError(f"dataset {dataset!r} has no images")
    count = int(cfg.calibration.count) if cfg.int8 == "static" else 0
    calib, images, masks = sample_images(pairs, preprocessing, count, int(cfg.report_count))
    if cfg.int8 == "static":
        quantize_static_int8(fp32, final, calib, method=str(cfg.calibration.method))
    else:
        quantize_dynamic_int8(fp32, final)
    report = compare_accuracy(fp32, final, images, masks, latency_runs=int(cfg.latency_runs))
    print_int8_report(report, cfg.int8, dataset, len(calib))
    if kept := read_onnx_metadata(final).get("float_nodes"):
        print(f"  kept float (their int8 input would be coarse): {', '.join(kept)}")
    return report


def export_model(cfg: Any, pairs_of: PairsOf) -> dict:
    """Export as ``cfg`` (export.yaml's options) says; returns the int8 report, if any (``{"int8": ...}``).

    ``pairs_of(name)`` gives a dataset's (image, mask) pairs: int8's calibration and report images.
    """
    output = check_arguments(cfg)
    model, preprocessing, metadata = load_for_export(str(cfg.weights))
    size = int(cfg.input_size)
    note = input_size_note(str(cfg.weights), preprocessing.image_size, size)
    if note:
        print(note, file=sys.stderr)
    options = {"input_size": size, "opset": int(cfg.opset), "dynamic_hw": bool(cfg.dynamic_hw)}
    options.update(fused_only=bool(cfg.fused_only), fold_batchnorm=bool(cfg.fold_batchnorm), metadata=metadata)
    kind = "fp16" if cfg.fp16 else f"int8 {cfg.int8}" if cfg.int8 else "fp32"
    print(f"exporting {metadata['model_name']} ({cfg.weights}) to {output}: {kind}, {size}², opset {cfg.opset}")
    results: dict = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    # Everything is built beside the output and moved into place at the end: no half file, nothing on failure.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        final = fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", **options)
        if cfg.verify:
            verify(fp32, model, size, str(cfg.output))
        if cfg.fp16:
            final = export_onnx(model, Path(tmp) / "fp16.onnx", fp16=True, **options)
            if cfg.verify:
                verify(final, model, size, str(cfg.output))
        elif cfg.int8:
            final = Path(tmp) / "int8.onnx"
            results["int8"] = _int8(fp32, final, cfg, replace(preprocessing, image_size=size), pairs_of)
        os.replace(final, output)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.2f} MB)")
    return results
