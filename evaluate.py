"""Score a model (checkpoint, official .pth or .onnx) on dataset configs, or saved predictions against
ground truth, with the field's metrics; write tables, per-image scores, curves and a gallery.

    python evaluate.py weights=runs/.../checkpoints/best.pt datasets=[duts_te,ecssd,hku_is]
    python evaluate.py pred_dir=rembg_masks gt_dir=data/DUTS-TE/DUTS-TE-Mask
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from u2net.data import collect_pairs, ensure_synthetic_dataset, split_pairs
from u2net.evaluation import (
    console_table,
    markdown_table,
    score_folders,
    score_model,
    write_gallery,
    write_per_image,
    write_plots,
    write_tables,
)
from u2net.fileio import write_text
from u2net.inference import Predictor
from u2net.models import WeightsDownloadError

REPO = Path(__file__).resolve().parent


def dataset_pairs(name: str, cfg: DictConfig) -> list:
    """The (image, mask) pairs of the ``test`` sources of ``configs/data/<name>.yaml`` (else its
    validation sources, else the images training holds out with ``val_fraction``)."""
    try:
        overrides = [f"data={name}", f"paths.data_dir={cfg.paths.data_dir}", *cfg.dataset_overrides]
        train_cfg = compose("train", overrides=overrides)
    except MissingConfigException:
        known = sorted(p.stem for p in (REPO / "configs" / "data").glob("[!_]*.yaml"))
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(known)}") from None
    try:
        data = instantiate(train_cfg.data, _convert_="all")
    except MissingMandatoryValue as exc:  # a required `???` value, e.g. data.images of data=folder
        key = exc.full_key
        raise ValueError(f"dataset {name!r} needs {key}: add dataset_overrides=['{key}=...']") from None
    if data.synthetic:
        options = dict(data.synthetic)
        ensure_synthetic_dataset(Path(options.pop("root")), progress=cfg.progress, **options)
    check = {"check": cfg.check, "on_invalid": cfg.on_invalid, "progress": cfg.progress}
    if data.test_sources or data.val_sources:
        return collect_pairs(data.test_sources or data.val_sources, **check)
    if data.train_sources and data.val_fraction > 0:
        # No separate test folders (e.g. human_seg): the images training held out, rebuilt as training
        # builds them (its file check and seed); another seed or other files give another split.
        seed = train_cfg.trainer.seed
        pairs = collect_pairs(data.train_sources, check=data.check, on_invalid=data.on_invalid, progress=cfg.progress)
        _, held_out = split_pairs(pairs, data.val_fraction, seed)
        print(
            f"{name}: scoring the {len(held_out)} image(s) training holds out (val_fraction {data.val_fraction}, "
            f"seed {seed}); if the model was trained with another seed: dataset_overrides=['seed=N']",
            file=sys.stderr,
        )
        return held_out[: data.max_val_samples] if data.max_val_samples is not None else held_out
    raise ValueError(f"dataset {name!r} names no test or validation images to score")


def score_weights(weights: str, cfg: DictConfig, out_dir: Path) -> tuple[list, dict]:
    """Score one model on every dataset of ``cfg.datasets``; returns the results and the model's facts."""
    predictor = Predictor.from_path(weights, cfg.device, cfg.precision, cfg.image_size)
    results = []
    for name in cfg.datasets:
        pairs = dataset_pairs(name, cfg)
        save_dir = out_dir / "predictions" / name if cfg.save_predictions else None
        results.append(
            score_model(
                predictor, pairs, name, cfg.batch_size, cfg.num_workers, save_dir, cfg.gallery_count, cfg.progress
            )
        )
    info = predictor.info
    model_info = {"model": info.name, "weights": info.source, "backend": info.backend, **info.extra}
    if info.parameters is not None:
        model_info["parameters"] = f"{info.parameters:,}"
    if info.size_mb is not None:
        model_info["size_mb"] = round(info.size_mb, 2)
    model_info["input_size"] = predictor.input_size
    if cfg.latency_runs > 0:
        speed = predictor.measure_latency(runs=cfg.latency_runs, size=320)  # a fixed-size model uses its own
        model_info[f"latency_ms_{speed['size']}"] = round(speed["latency_ms"], 2)
        model_info[f"images_per_s_{speed['size']}"] = round(speed["images_per_s"], 2)
        model_info["threads"] = torch.get_num_threads()
    return results, model_info


def write_reports(results: list, out_dir: Path, label: str, model_info: dict | None, gallery_count: int) -> dict:
    """Every report of one model (or one prediction folder) in ``out_dir``; prints the console table."""
    table = write_tables(results, out_dir, model_info)
    write_per_image(results, out_dir / "per_image.csv")
    write_plots([(f"{label} · {r.name}", r.summary) for r in results], out_dir)
    write_gallery(results, out_dir / "gallery.png", gallery_count)
    if model_info:
        print("  ".join(f"{k}={v}" for k, v in model_info.items()))
    print(console_table(results))
    for r in results:
        print(f"{r.name}: {r.summary['n_images']} image(s) scored, {len(r.failures)} problem(s)")
        for message in r.failures[:20]:
            print(f"  {message}")
        if len(r.failures) > 20:
            print(f"  ... and {len(r.failures) - 20} more")
    return table


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the evaluation ``cfg`` describes and write its reports into ``out_dir``.

    Several models (``weights=[a.pt,b.onnx]``) get one sub-folder each with the full reports, plus
    side-by-side curves and ``comparison.md`` in ``out_dir``.
    """
    if cfg.pred_dir:
        if not cfg.gt_dir:
            raise ValueError("pred_dir needs gt_dir (the ground-truth masks to score against)")
        result = score_folders(
            cfg.pred_dir, cfg.gt_dir, "pred_dir", cfg.image_dir, cfg.gallery_count, cfg.progress, cfg.missing_as_empty
        )
        table = write_reports([result], out_dir, Path(cfg.pred_dir).name, None, cfg.gallery_count)
    elif cfg.weights:
        weights = [cfg.weights] if isinstance(cfg.weights, str) else list(cfg.weights)
        if len(weights) == 1:
            results, info = score_weights(weights[0], cfg, out_dir)
            table = write_reports(results, out_dir, Path(weights[0]).stem, info, cfg.gallery_count)
        else:
            table, curves, rows = {}, [], []
            for i, path in enumerate(weights):
                label = f"{i + 1}_{Path(path).stem}"
                print(f"== {label}")
                results, info = score_weights(path, cfg, out_dir / label)
                table[label] = write_reports(results, out_dir / label, label, info, cfg.gallery_count)
                curves += [(f"{label} · {r.name}", r.summary) for r in results]
                rows += [replace(r, name=f"{label} · {r.name}") for r in results]
            write_plots(curves, out_dir)
            write_text(out_dir / "comparison.md", markdown_table(rows))
            print(console_table(rows))
    else:
        raise ValueError("nothing to score: give weights=PATH (a model) or pred_dir=DIR gt_dir=DIR (saved predictions)")
    print(f"results in {out_dir}")
    return table


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        return evaluate(cfg, out_dir)
    except (ValueError, FileNotFoundError, WeightsDownloadError) as exc:  # bad input or offline: one line
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
