"""Colour decontamination (``--decontaminate``): how much of the old background stays in a cut-out's edges.

Real photos do not come with their subjects' true colours, so each measurement composites a photo whose
colours and alpha are known. For each of the first N photos of ``--set``:

- alpha: our default mask of the photo (what a user's cut-out has), as uint8;
- F: the photo itself (taken as the subject's true colours); B: a background (below);
- the composite I = alpha·F + (1 − alpha)·B: a photo with a known subject on a known background.

Each pipeline makes the cut-out's colours from I and the known alpha: ``kept`` keeps I's colours (what rembg
and ``u2net remove`` write by default: B bleeds into the semi-transparent edge), ``decontaminated`` estimates F
(``decontaminate_colors``: pymatting's ``estimate_foreground_ml`` over the band's bounding box). Scores, over
the soft band (0 < alpha < 255), the mean |colours − F| weighted by alpha (how much of each pixel a viewer
sees on any new background), in /255. Two backgrounds B: the next photo (textured), and its mean colour (flat,
as a studio backdrop).

    python benchmarks/decontamination.py --real ../shared/real --limit 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from u2net.data import SourceSpec, collect_pairs
from u2net.data.io import read_image
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions
from u2net.inference.compositing import cover
from u2net.inference.refine import decontaminate_colors
from u2net.models.pretrained import bundled_weights_path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def band_error(colours: np.ndarray, truth: np.ndarray, alpha: np.ndarray) -> float:
    """Mean |colours − truth| over the soft band (0 < alpha < 255), each pixel weighted by its alpha, in /255.
    On any new background the cut-out's error there is alpha·|colours − truth|: this is its mean per unit of
    alpha, the same on white, black or a photo."""
    band = (alpha > 0) & (alpha < 255)
    weight = alpha[band].astype(np.float64)[:, None] / 255.0
    error = np.abs(colours[band].astype(np.float64) - truth[band].astype(np.float64))
    return float((error * weight).sum() / max(weight.sum() * 3, 1e-9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "real")
    parser.add_argument("--set", default="ecssd_dev")
    parser.add_argument("--limit", type=int, default=100, help="how many photos (default 100)")
    args = parser.parse_args(argv)
    pairs = collect_pairs([SourceSpec(args.set, str(args.real / args.set))], check="none", progress=False)
    photos = [image for image, _ in pairs[: args.limit + 1]]
    if len(photos) < 2:
        raise SystemExit(f"{args.real / args.set}: at least 2 photos needed")
    remover = BackgroundRemover(Predictor.from_path(bundled_weights_path("u2netp.duts")))
    rows = [(b, c) for b in ("photo", "flat") for c in ("kept", "decontaminated")]
    errors, seconds = dict.fromkeys(rows, 0.0), dict.fromkeys(rows, 0.0)
    band_share, n = 0.0, len(photos) - 1
    for index in range(n):
        truth = read_image(photos[index])
        alpha = remover.mask(truth, RemovalOptions())
        band_share += float(((alpha > 0) & (alpha < 255)).mean())
        other = cover(read_image(photos[index + 1]), alpha.shape)
        flat = np.broadcast_to(other.reshape(-1, 3).mean(0).astype(np.uint8), other.shape)  # a studio backdrop
        a = (alpha / 255.0)[..., None]
        for kind, background in (("photo", other), ("flat", flat)):
            composite = np.rint(a * truth + (1 - a) * background).astype(np.uint8)
            for row in ((kind, "kept"), (kind, "decontaminated")):
                started = time.perf_counter()
                colours = composite if row[1] == "kept" else decontaminate_colors(composite, alpha)
                seconds[row] += time.perf_counter() - started
                errors[row] += band_error(colours, truth, alpha)
        print(f"\r{index + 1}/{n}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(
        f"\n{n} composites from {args.set} (our default mask; soft band {100 * band_share / n:.1f} % of the pixels)\n"
    )
    print("| background | colours | error in the soft band (/255, alpha-weighted) | s/photo |")
    print("|---|---|---:|---:|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {errors[row] / n:.2f} | {seconds[row] / n:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
