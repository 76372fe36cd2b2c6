"""Soft edges against rembg on real alpha mattes: the four matting errors, tuning and report photos apart.

The photos are the alphamatting.com training set at low resolution (``--data``: ``images/``, ``alphas/``,
``trimaps/``, same names). GT01–GT13 are the **tune** part (the only photos :mod:`u2net.inference.soft_edges`'s
constants were chosen on); GT15–GT27 are the **report** part (never tuned on). The trimaps only score (the errors
over their unknown band); no pipeline sees them. Each pipeline makes an alpha matte at the photo's resolution from
the bundled U²-Net† (``u2netp.duts``, ONNX Runtime on both sides), timed per photo (decoding and scoring excluded):

- ``rembg``: rembg's ``remove(..., only_mask=True)``; ``rembg -a``: with its alpha matting;
- ``ours <preset>``: :meth:`~u2net.inference.BackgroundRemover.mask` with each ``--quality`` preset;
- ``soft edges``: the ``--base`` preset's mask (default ``best``), then
  :func:`~u2net.inference.soft_edges.soft_alpha` of the photo and that mask / 255 (model and matting timed together).

Errors (:mod:`u2net.metrics.matting`): SAD, MSE, gradient and connectivity, over the trimap's unknown band and over
the whole photo; the ratio row is soft edges / the better of rembg and rembg -a on each error. ``--out`` gets a PNG
of the ``--crops`` windows with the highest band error of the soft-edge matte (over all photos; each row photo, truth,
rembg, rembg -a, soft edges, its part named).

    python benchmarks/soft_edges.py                        # ../shared/real/alpha_dev, runs/soft_edges/crops.png
    python benchmarks/soft_edges.py --data DIR --out crops.png --crops 8
    python benchmarks/soft_edges.py --binary ../shared/real/ecssd_dev ../shared/real/duts_te_dev   # binary sets too

``--binary DIR …``: also the default preset, ``--base`` and the soft-edge mode (its matte rounded to 8 bits) on the
first ``--binary-limit`` pairs of each binary saliency set (``images/``, ``masks/``), scored as
``benchmarks/quality.py`` does (maxF, MAE, S-measure, boundary IoU, relaxed boundary F): what soft edges cost where
the truth is hard.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from quality import rembg_pipelines, score  # rembg (-a) with the same ONNX file; saliency scoring (quality.py)
from quality import table as saliency_table

from u2net.inference import BackgroundRemover, Predictor, RemovalOptions
from u2net.inference.options import QUALITY_PRESETS
from u2net.inference.soft_edges import soft_alpha
from u2net.metrics.matting import MATTING_KEYS, MattingMetrics, unknown_band
from u2net.models.pretrained import bundled_weights_path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
REPO = Path(__file__).resolve().parents[1]
TUNE_LAST = 13  # GT01..GT13: tune; above: report
SOFT = "soft edges"
COLUMNS = [f"{k}_band" for k in MATTING_KEYS] + list(MATTING_KEYS)
LABELS = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn"}
Pipeline = Callable[[np.ndarray], np.ndarray]  # H×W×3 uint8 photo -> H×W alpha (uint8 or float in [0, 1])


def binary_check(folder: Path, limit: int, base: str) -> str:
    """Markdown: the default preset, ``base`` and the soft-edge mode on the first ``limit`` pairs of ``folder``."""
    from u2net.data import SourceSpec, collect_pairs
    from u2net.inference.options import DEFAULT_QUALITY

    remover = BackgroundRemover(Predictor.from_path(bundled_weights_path("u2netp.duts")))
    options = {name: RemovalOptions.preset(name) for name in dict.fromkeys((DEFAULT_QUALITY, base))}
    runs: dict[str, Pipeline] = {f"ours {name}": (lambda rgb, o=o: remover.mask(rgb, o)) for name, o in options.items()}

    def soft(rgb: np.ndarray) -> np.ndarray:
        alpha = soft_alpha(rgb, remover.mask(rgb, options[base]) / np.float32(255.0))
        return np.rint(alpha * 255.0).astype(np.uint8)

    runs[SOFT] = soft
    pairs = collect_pairs([SourceSpec(folder.name, str(folder))], check="none", progress=False)[:limit]
    print(f"{folder.name}: {len(pairs)} pairs, {len(runs)} pipelines", file=sys.stderr, flush=True)
    return saliency_table({folder.name: score(runs, pairs, {})})


def photo_parts(data: Path) -> dict[str, list[str]]:
    """The photos' names (``GTnn``) of the tune part (nn ≤ 13) and the report part (the rest), sorted."""
    names = sorted(p.stem for p in (data / "images").glob("GT*.png"))
    if not names:
        raise SystemExit(f"{data}/images: no GT*.png photos")
    return {
        "tune": [n for n in names if int(n[2:]) <= TUNE_LAST],
        "report": [n for n in names if int(n[2:]) > TUNE_LAST],
    }


def read_photo(data: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo H×W×3 uint8, true alpha H×W uint8, trimap H×W uint8) of one photo."""
    rgb = np.asarray(Image.open(data / "images" / f"{name}.png").convert("RGB"))
    alpha = np.asarray(Image.open(data / "alphas" / f"{name}.png").convert("L"))
    trimap = np.asarray(Image.open(data / "trimaps" / f"{name}.png").convert("L"))
    return rgb, alpha, trimap


def pipelines(base: str) -> dict[str, Pipeline]:
    """rembg, rembg -a, each preset and the soft-edge mode on ``base``'s mask, all with the bundled weights."""
    onnx = bundled_weights_path("u2netp.duts")
    remover = BackgroundRemover(Predictor.from_path(onnx))
    result = dict(rembg_pipelines(onnx, matting=True))
    matted = result["rembg -a"]

    def rembg_matted(rgb: np.ndarray) -> np.ndarray:
        with contextlib.redirect_stdout(sys.stderr):  # pymatting's ichol prints its retries: keep the tables clean
            return matted(rgb)

    result["rembg -a"] = rembg_matted
    presets = {name: RemovalOptions.preset(name) for name in QUALITY_PRESETS}
    for name, options in presets.items():
        result[f"ours {name}"] = lambda rgb, o=options: remover.mask(rgb, o)
    base_options = RemovalOptions.preset(base)
    # pymatting's import (numba's cached kernels) once here, as the model's loading, not in the first photo's time
    soft_alpha(np.zeros((8, 8, 3), np.uint8), np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    result[SOFT] = lambda rgb: soft_alpha(rgb, remover.mask(rgb, base_options) / np.float32(255.0))
    return result


def unit(alpha: np.ndarray) -> np.ndarray:
    """An alpha matte as float64 in [0, 1] (uint8 scaled by 1/255)."""
    return alpha / 255.0 if alpha.dtype == np.uint8 else np.asarray(alpha, np.float64)


def run_part(
    data: Path, names: list[str], runs: dict[str, Pipeline], mattes: dict, rows: dict
) -> dict[str, dict[str, float]]:
    """Mean errors and seconds per photo of every pipeline on ``names``; each matte is kept in ``mattes`` and each
    photo's errors in ``rows``."""
    metrics = {name: MattingMetrics() for name in runs}
    seconds = dict.fromkeys(runs, 0.0)
    for photo in names:
        rgb, truth, trimap = read_photo(data, photo)
        for name, run in runs.items():
            started = time.perf_counter()
            alpha = unit(run(rgb))
            seconds[name] += time.perf_counter() - started
            rows[photo, name] = metrics[name].update(alpha, truth, trimap)
            mattes[photo, name] = alpha
        print(f"  {photo} done", file=sys.stderr, flush=True)
    return {name: metrics[name].results() | {"s": seconds[name] / len(names)} for name in runs}


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per pipeline, the errors (band, then whole photo) and seconds per photo; then the ratio of
    the soft-edge mode to the better of rembg and rembg -a on each error."""
    head = [f"{LABELS[c.split('_')[0]]} {'band' if c.endswith('_band') else 'whole'}" for c in COLUMNS]
    lines = ["| pipeline | " + " | ".join(head) + " | s/photo |", "|---|" + "---:|" * (len(COLUMNS) + 1)]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4g}" for c in COLUMNS) + f" | {row['s']:.2f} |")
    better = {c: min(results["rembg"][c], results["rembg -a"][c]) for c in COLUMNS}
    ratios = [results[SOFT][c] / better[c] if better[c] > 0 else float("nan") for c in COLUMNS]
    lines.append(f"| **{SOFT} / better of rembg, rembg -a** | " + " | ".join(f"**{r:.2f}×**" for r in ratios) + " | |")
    return "\n".join(lines)


def photo_table(names: list[str], rows: dict) -> str:
    """Markdown: each photo's SAD band, gradient band and SAD whole for rembg, rembg -a and the soft-edge mode."""
    shown = ("rembg", "rembg -a", SOFT)
    keys = (("sad_band", "SAD band"), ("grad_band", "Grad band"), ("sad", "SAD whole"))
    head = " | ".join(f"{label}: {name}" for _, label in keys for name in shown)
    lines = [f"| photo | {head} |", "|---|" + "---:|" * (len(keys) * len(shown))]
    for photo in names:
        cells = " | ".join(f"{rows[photo, name][key]:.2f}" for key, _ in keys for name in shown)
        lines.append(f"| {photo} | {cells} |")
    return "\n".join(lines)


def hardest_crops(data: Path, parts: dict[str, list[str]], mattes: dict, count: int, side: int = 160) -> np.ndarray:
    """``count`` windows (``side`` px) of the largest soft-edge band error, at most two per photo, stacked as rows of
    photo, truth, rembg, rembg -a, soft edges (each 2× enlarged, labelled with the photo and its part)."""
    candidates = []
    for part, names in parts.items():
        for photo in names:
            rgb, truth, trimap = read_photo(data, photo)
            error = np.abs(mattes[photo, SOFT] - truth / 255.0) * unknown_band(trimap)
            window = cv2.boxFilter(error.astype(np.float32), -1, (side, side), normalize=False)
            for _ in range(2):  # the photo's two worst windows that do not overlap
                y, x = np.unravel_index(int(window.argmax()), window.shape)
                y0 = int(np.clip(y - side // 2, 0, max(truth.shape[0] - side, 0)))
                x0 = int(np.clip(x - side // 2, 0, max(truth.shape[1] - side, 0)))
                candidates.append((float(window[y, x]), part, photo, y0, x0))
                window[max(y - side, 0) : y + side, max(x - side, 0) : x + side] = 0
    rows = []
    for _, part, photo, y0, x0 in sorted(candidates, reverse=True)[:count]:
        rgb, truth, _ = read_photo(data, photo)
        crop = (slice(y0, y0 + side), slice(x0, x0 + side))
        gray = [np.clip(a, 0, 1) for a in (truth / 255.0, mattes[photo, "rembg"], mattes[photo, "rembg -a"])]
        gray.append(np.clip(mattes[photo, SOFT], 0, 1))
        tiles = [rgb[crop]] + [np.repeat((255 * g[crop]).round().astype(np.uint8)[..., None], 3, axis=2) for g in gray]
        row = cv2.resize(np.concatenate(tiles, axis=1), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        cv2.putText(row, f"{photo} ({part})", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 40, 40), 2)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "real" / "alpha_dev")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "soft_edges" / "crops.png")
    parser.add_argument("--crops", type=int, default=6, help="windows of highest soft-edge band error in --out")
    parser.add_argument("--base", default="best", choices=QUALITY_PRESETS, help="the preset whose mask is matted")
    parser.add_argument(
        "--binary", type=Path, nargs="+", default=[], help="also binary saliency sets (images/, masks/), e.g. ecssd_dev"
    )
    parser.add_argument("--binary-limit", type=int, default=100, help="the first N pairs of each")
    parser.add_argument("--no-alpha", action="store_true", help="only the --binary check")
    args = parser.parse_args(argv)
    if args.no_alpha:
        if not args.binary:
            parser.error("--no-alpha needs --binary")
        binary_checks(args.binary, args.binary_limit, args.base)
        return 0
    parts = photo_parts(args.data)
    runs = pipelines(args.base)
    load_before = os.getloadavg()
    mattes: dict = {}
    rows: dict = {}
    results = {}
    for part, names in parts.items():
        print(f"{part}: {len(names)} photos, {len(runs)} pipelines", file=sys.stderr, flush=True)
        results[part] = run_part(args.data, names, runs, mattes, rows)
    load_after = os.getloadavg()
    print(f"\nbundled u2netp (u2netp.duts), ONNX Runtime CPU, {os.cpu_count()} cores; soft edges on `{args.base}`.")
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after))
    print(f"load average (1, 5, 15 min): {before} before the run, {after} after\n")
    titles = {"tune": "tune part (the constants were chosen on these)", "report": "report part (never tuned on)"}
    for part, names in parts.items():
        print(f"### {titles[part]}: {', '.join(names)}\n\n{table(results[part])}\n")
        print(f"Per photo:\n\n{photo_table(names, rows)}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hardest_crops(args.data, parts, mattes, args.crops)).save(args.out)
    print(f"crops (photo, truth, rembg, rembg -a, soft edges): {args.out}")
    binary_checks(args.binary, args.binary_limit, args.base)
    return 0


def binary_checks(folders: list[Path], limit: int, base: str) -> None:
    """Print :func:`binary_check`'s table for each of ``folders``."""
    for folder in folders:
        print(f"\n### binary set: {folder.name}, first {limit} pairs\n")
        print(binary_check(folder, limit, base), flush=True)


if __name__ == "__main__":
    sys.exit(main())
