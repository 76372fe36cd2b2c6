"""Export a U²-Net (our checkpoint, an official .pth, a pretrained tag or an ONNX U²-Net) to ONNX, check the
file against PyTorch, and for int8 report what quantisation costs in accuracy and gains in speed.

    python export_onnx.py weights=checkpoints/u2net.pth output=u2net.onnx
    python export_onnx.py weights=u2netp.duts output=u2netp.onnx dynamic_hw=true
    python export_onnx.py weights=runs/.../checkpoints/best.pt output=model_fp16.onnx fp16=true
    python export_onnx.py weights=runs/.../checkpoints/best.pt output=model_int8.onnx int8=static

The file outputs probabilities (fused first, then the six side outputs) like rembg's u2net.onnx: it works with
rembg (``new_session("u2net_custom", model_path=...)``), ONNX-Runtime apps, ``evaluate.py weights=model.onnx``,
and loads back for fine-tuning (``python train.py model.weights=model.onnx``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from u2net.data import eval_transform, read_image, read_mask
from u2net.export import (
    compare_accuracy,
    export_onnx,
    quantize_dynamic_int8,
    quantize_static_int8,
    verify_onnx,
)
from u2net.inference.predictor import DEFAULT_PREPROCESSING
from u2net.models import (
    PRETRAINED,
    WeightsDownloadError,
    create_model,
    download_weights,
    infer_architecture,
    load_state_dict,
)
from u2net.models.pretrained import sha256_of
from u2net.models.weights import read_checkpoint

INT8_MODES = ("dynamic", "static")


class VerificationError(ValueError):
    """The exported file does not compute what the PyTorch model computes."""


def check_arguments(cfg: DictConfig) -> Path:
    """The output path, once the options are known to make sense (before any slow work)."""
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
    if not Path(cfg.weights).expanduser().exists() and str(cfg.weights) not in PRETRAINED:
        raise FileNotFoundError(f"{cfg.weights}: weights file not found")
    return output


def load_for_export(weights: str):
    """The model in eval mode, its preprocessing and the metadata naming where it came from."""
    checkpoint = read_checkpoint(weights)
    name = checkpoint.get("model_name") or infer_architecture(checkpoint["model"])
    model = create_model(name, **(checkpoint.get("model_args") or {}))
    load_state_dict(model, checkpoint["model"], source=weights)
    preprocessing = dict(checkpoint.get("preprocessing") or {})
    path = Path(weights).expanduser()
    if not path.exists():  # a pretrained tag: read_checkpoint has downloaded it into the cache
        cfg = PRETRAINED[weights]
        preprocessing = {"mean": list(cfg.mean), "std": list(cfg.std), "normalization": cfg.normalization}
        path = download_weights(weights, progress=False)
    preprocessing = {**DEFAULT_PREPROCESSING, **preprocessing}
    metadata = {k: v for k, v in preprocessing.items() if k != "image_size"}
    metadata.update(model_name=name, source_weights=path.name, weights_sha256=sha256_of(path))
    return model.eval(), preprocessing, metadata


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
    parts = [
        f"{label}: max |onnx - torch| {r['max_abs_diff']:.2e}, vs float64 onnx {r['onnx_vs_float64']:.2e} "
        f"torch {r['torch_vs_float64']:.2e} (bound {r['bound']:.2e})"
        for label, r in report.items()
        if isinstance(r, dict)
    ]
    size = "×".join(str(s) for s in report["size"])
    status = "ok" if report["ok"] else "FAILED"
    print(f"verify ({report['precision']}, {size}): onnx checker ok; " + "; ".join(parts) + f" -> {status}")


def verify(path: Path, model, cfg: DictConfig) -> None:
    report = verify_onnx(path, model, int(cfg.input_size))
    print_verification(report)
    if not report["ok"]:
        worst = max(
            (r for r in report.values() if isinstance(r, dict)), key=lambda r: r["onnx_vs_float64"] / r["bound"]
        )
        raise VerificationError(
            f"ONNX Runtime disagrees with PyTorch (error {worst['onnx_vs_float64']:.2e} against float64 is over "
            f"the bound {worst['bound']:.2e}); {cfg.output} was not written (verify=false writes it anyway)"
        )


def sample_images(cfg: DictConfig, preprocessing: dict, calibration: int, report: int) -> tuple[list, list, list]:
    """Preprocessed calibration images, and separate report images with their masks, from the dataset config."""
    from evaluate import dataset_pairs  # a top-level script like this one: its dataset-config helper

    view = OmegaConf.create(
        {
            "paths": {"data_dir": str(cfg.paths.data_dir)},
            "dataset_overrides": list(cfg.calibration.dataset_overrides),
            "check": "header",
            "on_invalid": "skip",
            "progress": bool(cfg.progress),
        }
    )
    pairs = dataset_pairs(str(cfg.calibration.dataset), view)
    if not pairs:
        raise ValueError(f"dataset {cfg.calibration.dataset!r} has no images")
    order = np.random.default_rng(0).permutation(len(pairs))
    calib_pairs = [pairs[i] for i in order[:calibration]]
    report_pairs = [pairs[i] for i in order[calibration : calibration + report]] or calib_pairs[:report]
    transform = eval_transform(**{**preprocessing, "image_size": int(cfg.input_size)})

    def prepare(image_path) -> np.ndarray:
        image = read_image(image_path)
        return transform(image, np.zeros(image.shape[:2], np.float32))[0].numpy()

    calib_images = [prepare(image) for image, _ in calib_pairs]
    report_images = [prepare(image) for image, _ in report_pairs]
    report_masks = [read_mask(mask) for _, mask in report_pairs]
    return calib_images, report_images, report_masks


def print_int8_report(report: dict, mode: str, dataset: str, calibrated: int) -> None:
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


def export(cfg: DictConfig) -> dict:
    """Export as ``cfg`` says; returns the verification (and int8) reports."""
    output = check_arguments(cfg)
    model, preprocessing, metadata = load_for_export(str(cfg.weights))
    note = input_size_note(str(cfg.weights), int(preprocessing["image_size"]), int(cfg.input_size))
    if note:
        print(note, file=sys.stderr)
    options = {
        "input_size": int(cfg.input_size),
        "opset": int(cfg.opset),
        "dynamic_hw": bool(cfg.dynamic_hw),
        "fused_only": bool(cfg.fused_only),
        "fold_batchnorm": bool(cfg.fold_batchnorm),
        "metadata": metadata,
    }
    kind = "fp16" if cfg.fp16 else f"int8 {cfg.int8}" if cfg.int8 else "fp32"
    print(
        f"exporting {metadata['model_name']} ({cfg.weights}) to {output}: {kind}, {cfg.input_size}², opset {cfg.opset}"
    )
    results: dict = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    # Everything is built beside the output and moved into place at the end: no half file, nothing on failure.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, **options)
        if cfg.verify:
            verify(fp32, model, cfg)
        final = fp32
        if cfg.fp16:
            final = export_onnx(model, Path(tmp) / "fp16.onnx", fp16=True, **options)
            if cfg.verify:
                verify(final, model, cfg)
        elif cfg.int8:
            count = int(cfg.calibration.count) if cfg.int8 == "static" else 0
            calib, images, masks = sample_images(cfg, preprocessing, count, int(cfg.report_count))
            final = Path(tmp) / "int8.onnx"
            if cfg.int8 == "static":
                quantize_static_int8(fp32, final, calib, method=str(cfg.calibration.method))
            else:
                quantize_dynamic_int8(fp32, final)
            results["int8"] = compare_accuracy(fp32, final, images, masks, latency_runs=int(cfg.latency_runs))
            print_int8_report(results["int8"], cfg.int8, str(cfg.calibration.dataset), len(calib))
        os.replace(final, output)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.2f} MB)")
    return results


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> dict:
    try:
        return export(cfg)
    except (ValueError, FileNotFoundError, FileExistsError, WeightsDownloadError) as exc:  # one line, no traceback
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
