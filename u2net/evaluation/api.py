"""evaluate.py's task: score models (or saved predictions) and write every report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_text
from ..inference import Predictor
from .report import (
    console_table,
    markdown_table,
    shown,
    write_gallery,
    write_per_image,
    write_plots,
    write_tables,
)
from .runner import DatasetResult, SoftTruth, score_folders, score_model

# dataset name -> its (image, mask) pairs to score and the reader of their masks (DatasetConfigs.scoring_set)
ScoringSetOf = Callable[[str], tuple[list, Callable]]


def soft_truth(cfg: Any) -> SoftTruth | None:
    """Whether the ground truth is scored as alpha mattes (``soft_gt``; unset: when ``trimap_dir`` is given)."""
    trimap_dir, soft = cfg.get("trimap_dir"), cfg.get("soft_gt")
    if soft is None:
        soft = trimap_dir is not None
    if trimap_dir is not None and not soft:
        raise ValueError("trimap_dir needs soft_gt: trimaps score the band of soft ground truth (alpha mattes)")
    return SoftTruth(trimap_dir) if soft else None


def score_weights(
    weights: str, cfg: Any, out_dir: Path, scoring_set_of: ScoringSetOf
) -> tuple[list[DatasetResult], dict]:
    """Score one model on every dataset of ``cfg.datasets``; returns the results and the model's facts."""
    predictor = Predictor.from_path(weights, cfg.device, cfg.precision, cfg.image_size)
    soft = soft_truth(cfg)
    results = []
    for name in cfg.datasets:
        save_dir = out_dir / "predictions" / name if cfg.save_predictions else None
        options = (cfg.batch_size, cfg.num_workers, save_dir, cfg.gallery_count, cfg.progress)
        pairs, read_gt = scoring_set_of(name)
        results.append(score_model(predictor, pairs, name, *options, read_gt=read_gt, soft=soft))
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
    lines = ["  ".join(f"{k}={v}" for k, v in model_info.items())] if model_info else []
    lines.append(console_table(results))
    for r in results:
        lines.append(f"{r.name}: {r.summary['n_images']} image(s) scored, {len(r.failures)} problem(s)")
        lines += [f"  {message}" for message in r.failures[:20]]
        if len(r.failures) > 20:
            lines.append(f"  ... and {len(r.failures) - 20} more")
    print(shown("\n".join(lines)))  # a name that is not UTF-8 as \xff: a strict UTF-8 stdout cannot print it
    return table


def evaluate_models(cfg: Any, out_dir: Path, scoring_set_of: ScoringSetOf) -> dict:
    """Run the evaluation ``cfg`` (evaluate.yaml's options) describes and write its reports into ``out_dir``.

    ``scoring_set_of(name)`` gives a dataset's pairs and mask reader (:meth:`DatasetConfigs.scoring_set`).
    Several models (``weights=[a.pt,b.onnx]``) get one sub-folder each with the full reports, plus
    side-by-side curves and ``comparison.md`` in ``out_dir``.
    """
    if cfg.pred_dir:
        if not cfg.gt_dir:
            raise ValueError("pred_dir needs gt_dir (the ground-truth masks to score against)")
        options = (cfg.image_dir, cfg.gallery_count, cfg.progress, cfg.missing_as_empty, cfg.get("gt_labels"))
        result = score_folders(cfg.pred_dir, cfg.gt_dir, "pred_dir", *options, soft=soft_truth(cfg))
        table = write_reports([result], out_dir, Path(cfg.pred_dir).name, None, cfg.gallery_count)
    elif cfg.weights:
        weights = [cfg.weights] if isinstance(cfg.weights, str) else list(cfg.weights)
        if len(weights) == 1:
            results, info = score_weights(weights[0], cfg, out_dir, scoring_set_of)
            table = write_reports(results, out_dir, Path(weights[0]).stem, info, cfg.gallery_count)
        else:
            table, curves, rows = {}, [], []
            for i, path in enumerate(weights):
                label = f"{i + 1}_{Path(path).stem}"
                print(shown(f"== {label}"))
                results, info = score_weights(path, cfg, out_dir / label, scoring_set_of)
                table[label] = write_reports(results, out_dir / label, label, info, cfg.gallery_count)
                curves += [(f"{label} · {r.name}", r.summary) for r in results]
                rows += [replace(r, name=f"{label} · {r.name}") for r in results]
            write_plots(curves, out_dir)
            write_text(out_dir / "comparison.md", shown(markdown_table(rows)))
            print(shown(console_table(rows)))
    else:
        raise ValueError("nothing to score: give weights=PATH (a model) or pred_dir=DIR gt_dir=DIR (saved predictions)")
    print(shown(f"results in {out_dir}"))
    return table
