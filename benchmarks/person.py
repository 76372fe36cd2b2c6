"""People: the general U²-Net†, the person model and rembg with the general weights, on held-out photos of people.

The photos are ccp_dev's validation part by ID block (0605–0804 by default: no photo the person model was
trained or tuned on; consecutive IDs can be the same person, so the split is a block, not a draw). Each
pipeline makes a mask at the photo's resolution; the masks are scored like ``evaluate.py`` and timed
(seconds per photo, decoding excluded). Rows:

- ``rembg (general)``: rembg's ``remove(..., only_mask=True)`` with the bundled ``u2netp.duts`` file;
- ``general, <preset>``: ours with the general weights (``u2netp.duts``) and each ``--presets`` preset;
- ``person, <preset>``: the same with ``--person`` (default the bundled ``u2netp.person``);
- ``--int8 FILE``: the person model's int8 file with each preset.

Besides the means it reports, per pipeline, the worst photo's IoU and how many photos fall below
``--iou-floor``, and writes ``--gallery`` (PNG): the photos the general model does worst on (by IoU), each
as photo, truth, general, person.

    python benchmarks/person.py                              # ../shared/real/ccp_dev, IDs 0605-0804
    python benchmarks/person.py --person runs/person/checkpoints/best.pt --presets balanced fast
    python benchmarks/person.py --first 545 --last 604 --no-rembg   # the tuning part instead
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from u2net.data import SourceSpec, collect_pairs
from u2net.data.io import read_image, read_mask
from u2net.evaluation.runner import mask_to_uint8
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions
from u2net.inference.options import QUALITY_PRESETS
from u2net.metrics import SaliencyMetrics
from u2net.models.pretrained import bundled_weights_path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
KEYS = (("mae", "MAE"), ("max_f", "maxF"), ("sm", "S"), ("iou", "IoU"), ("biou", "BIoU"), ("relax_bf", "relax BF"))
Pipeline = Callable[[np.ndarray], np.ndarray]  # H×W×3 uint8 photo -> H×W uint8 mask


def held_out_pairs(root: Path, first: int, last: int) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of ``root`` whose numeric stem lies in [first, last]."""
    pairs = collect_pairs([SourceSpec(root.name, str(root))], check="none", progress=False)
    return [pair for pair in pairs if pair[0].stem.isdigit() and first <= int(pair[0].stem) <= last]


def rembg_pipeline(onnx: Path) -> Pipeline:
    from rembg import new_session, remove

    session = new_session("u2net_custom", model_path=str(onnx))
    return lambda rgb: np.asarray(remove(Image.fromarray(rgb), session=session, only_mask=True))


def our_pipelines(label: str, weights: str | Path, presets: list[str]) -> dict[str, Pipeline]:
    remover = BackgroundRemover(Predictor.from_path(weights))
    options = {f"{label}, {name}": RemovalOptions.preset(name) for name in presets}
    return {name: (lambda rgb, o=o: remover.mask(rgb, o)) for name, o in options.items()}


def score(pipelines: dict[str, Pipeline], pairs: list) -> tuple[dict, dict[str, list[float]], dict]:
    """Scores and seconds per photo of each pipeline; each photo's IoU per pipeline; the masks of the photos
    kept for the gallery are recomputed later, so nothing large is held here."""
    from tqdm import tqdm

    metrics = {name: SaliencyMetrics() for name in pipelines}
    ious: dict[str, list[float]] = {name: [] for name in pipelines}
    seconds = dict.fromkeys(pipelines, 0.0)
    for image_path, mask_path in tqdm(pairs, unit="photo", file=sys.stderr):
        rgb, gt = read_image(image_path), mask_to_uint8(read_mask(mask_path))
        for name, pipeline in pipelines.items():
            started = time.perf_counter()
            mask = pipeline(rgb)
            seconds[name] += time.perf_counter() - started
            ious[name].append(metrics[name].update(mask, gt)["iou"])
    results = {}
    for name, m in metrics.items():
        summary = m.results()
        results[name] = {k: float(summary[k]) for k, _ in KEYS} | {
            "seconds": seconds[name],
            "s_per_photo": seconds[name] / max(m.n_images, 1),
        }
    return results, ious, seconds


def table(results: dict, ious: dict[str, list[float]], floor: float) -> str:
    header = "| pipeline | " + " | ".join(label for _, label in KEYS) + f" | worst IoU | IoU < {floor} | s/photo |"
    lines = [header, "|---|" + "---:|" * (len(KEYS) + 3)]
    for name, row in results.items():
        cells = [f"{row[k]:.4f}" for k, _ in KEYS]
        below = sum(value < floor for value in ious[name])
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {min(ious[name]):.4f} | {below} | {row['s_per_photo']:.3f} |"
        )
    return "\n".join(lines)


def gallery(path: Path, pairs: list, worst: list[int], general: Pipeline, person: Pipeline, height: int = 240) -> None:
    """A PNG of the ``worst`` photos: photo, truth, general, person, one row each."""
    rows = []
    for index in worst:
        image_path, mask_path = pairs[index]
        rgb = read_image(image_path)
        width = round(rgb.shape[1] * height / rgb.shape[0])
        cells = [rgb, mask_to_uint8(read_mask(mask_path)), general(rgb), person(rgb)]
        resized = [np.asarray(Image.fromarray(cell).convert("RGB").resize((width, height))) for cell in cells]
        rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in resized], 1))
    widest = max(row.shape[1] for row in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, widest - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    Image.fromarray(sheet).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_real = Path(__file__).resolve().parents[2] / "shared" / "real"
    parser.add_argument("--data", type=Path, default=default_real / "ccp_dev", help="images/ and masks/ by stem")
    parser.add_argument("--first", type=int, default=605, help="first ID of the held-out block (605)")
    parser.add_argument("--last", type=int, default=804, help="last ID of the held-out block (804)")
    parser.add_argument("--general", default="u2netp.duts", help="the general weights (u2netp.duts)")
    parser.add_argument("--person", default="u2netp.person", help="the person weights (u2netp.person)")
    parser.add_argument("--presets", nargs="+", default=["balanced"], choices=QUALITY_PRESETS)
    parser.add_argument("--int8", type=Path, help="also the person model's int8 file with each preset")
    parser.add_argument("--no-rembg", action="store_true")
    parser.add_argument("--iou-floor", type=float, default=0.85)
    parser.add_argument("--gallery", type=Path, default=Path("person_gallery.png"))
    parser.add_argument("--gallery-count", type=int, default=8)
    args = parser.parse_args(argv)

    pairs = held_out_pairs(args.data, args.first, args.last)
    if not pairs:
        parser.error(f"{args.data}: no pairs with IDs {args.first}-{args.last}")
    pipelines = {} if args.no_rembg else {"rembg (general)": rembg_pipeline(bundled_weights_path("u2netp.duts"))}
    pipelines.update(our_pipelines("general", args.general, args.presets))
    pipelines.update(our_pipelines("person", args.person, args.presets))
    if args.int8:
        pipelines.update(our_pipelines(f"person int8 ({args.int8.name})", args.int8, args.presets))
    where = f"{args.data.name}, IDs {args.first}-{args.last}"
    print(f"{where}: {len(pairs)} photos, {len(pipelines)} pipelines", file=sys.stderr)
    results, ious, _ = score(pipelines, pairs)
    print(f"\n{len(pairs)} held-out photos ({where}); general {args.general}, person {args.person}, CPU")
    print(table(results, ious, args.iou_floor))
    first = args.presets[0]
    general_ious = ious[f"general, {first}"]
    worst = list(np.argsort(general_ious)[: args.gallery_count])
    gallery(args.gallery, pairs, worst, pipelines[f"general, {first}"], pipelines[f"person, {first}"])
    print(f"\ngallery of the general model's {len(worst)} worst photos (photo, truth, general, person): {args.gallery}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
