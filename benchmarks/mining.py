"""Does `u2net mine` earn its place? Fine-tune on K photos it picks against K picked at random, same budget.

From a labelled training pool (its true masks stand in for the corrections a user would make), each
ranking of ``u2net mine`` (:func:`u2net.inference.mining.rank_photos`, run with the start model) picks the K
photos it is least sure of; ``random`` picks K by a seeded draw. Each pick is fine-tuned with the same
command (``train.py experiment=person``, ``--steps`` steps, the seed of the row) and its last checkpoint (no
selection on any validation set) is scored on the held-out block at the model's input size. One row per
(K, ranking, seed), then the mean of each (K, ranking) over the seeds.

    python benchmarks/mining.py                                    # ccp_dev: pool 0001-0544, scored on 0605-0804
    python benchmarks/mining.py --k 50 100 --seeds 0 1 --rankings combined random --steps 50
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import numpy as np
from person import held_out_pairs  # the ID-block split, one definition (benchmarks/person.py)

from u2net.evaluation.runner import score_model
from u2net.inference import Predictor
from u2net.inference.mining import RANKINGS, MinedPhoto, PhotoUncertainty, rank_photos

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
REPO = Path(__file__).resolve().parents[1]
KEYS = (("mae", "MAE"), ("max_f", "maxF"), ("sm", "S"), ("iou", "IoU"), ("biou", "BIoU"))


def link_folder(pairs: list[tuple[Path, Path]], folder: Path) -> tuple[Path, Path]:
    """``folder/images`` and ``folder/masks`` of symbolic links to ``pairs`` (nothing is copied)."""
    images, masks = folder / "images", folder / "masks"
    for sub in (images, masks):
        sub.mkdir(parents=True, exist_ok=True)
    for image, mask in pairs:
        for link, target in ((images / image.name, image), (masks / mask.name, mask)):
            if not link.exists():
                link.symlink_to(target.absolute())
    return images, masks


def fine_tune(
    images: Path, masks: Path, val: tuple[Path, Path], run_dir: Path, seed: int, steps: int, threads: int = 0
) -> Path:
    """``train.py experiment=person`` on the folder pair; returns its last.pt (made once: reruns reuse it)."""
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        return last
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=person",
        f"data.images={images}",
        f"data.masks={masks}",
        f"data.val_images={val[0]}",
        f"data.val_masks={val[1]}",
        f"seed={seed}",
        f"trainer.max_steps={steps}",
        "trainer.val_every=0",
        "trainer.validate_at_start=false",
        "trainer.progress=false",
        "data.progress=false",
        "logger=none",
        f"trainer.num_threads={threads}",
        f"hydra.run.dir={run_dir}",
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return last


def pool_signals(predictor: Predictor, photos: list[Path], cache: Path) -> list[MinedPhoto]:
    """Every pool photo's signals (:func:`rank_photos`), kept in ``cache`` so that a rerun skips them."""
    if cache.exists():
        with open(cache, newline="") as f:
            rows = list(csv.DictReader(f))
        if [row["path"] for row in rows] == [str(p) for p in photos]:
            fields = ("band", "flip", "entropy")
            signals = [PhotoUncertainty(*(float(row[k]) for k in fields), int(row["parts"])) for row in rows]
            return [MinedPhoto(Path(row["path"]), s, s.combined) for row, s in zip(rows, signals)]
    print(f"ranking the pool of {len(photos)} photos", file=sys.stderr, flush=True)
    ranked = sorted(rank_photos(predictor, photos, by="combined"), key=lambda item: str(item.path))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "band", "flip", "entropy", "parts"])
        writer.writerows([str(m.path), *astuple(m.signals)] for m in ranked)
    return ranked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "real" / "ccp_dev")
    parser.add_argument("--pool", type=int, nargs=2, default=(1, 544), help="IDs of the training pool")
    parser.add_argument("--val", type=int, nargs=2, default=(545, 604), help="IDs that validate (unused for picks)")
    parser.add_argument("--test", type=int, nargs=2, default=(605, 804), help="IDs the runs are scored on")
    parser.add_argument("--k", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rankings", nargs="+", default=["combined", "random"], choices=RANKINGS)
    parser.add_argument("--steps", type=int, default=50, help="fine-tuning steps of 8 photos, the same for every K")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of each run (0: torch's default)")
    parser.add_argument("--model", default="u2netp.duts", help="the start model: mines and is fine-tuned")
    parser.add_argument("--work", type=Path, default=Path("runs/mining"), help="links and runs (reused when rerun)")
    args = parser.parse_args(argv)

    pool, test = held_out_pairs(args.data, *args.pool), held_out_pairs(args.data, *args.test)
    val = link_folder(held_out_pairs(args.data, *args.val), args.work / "val")
    masks_of = dict(pool)
    predictor = Predictor.from_path(args.model)
    signals = pool_signals(predictor, [image for image, _ in pool], args.work / "pool_signals.csv")
    start = score_model(predictor, test, "start", progress=False).summary
    rows = [("start", "-", "-", start)]
    for k in args.k:
        for ranking in args.rankings:
            for seed in args.seeds:
                if ranking == "random":
                    order = [pool[i][0] for i in np.random.default_rng(seed).permutation(len(pool))]
                else:
                    order = [item.path for item in sorted(signals, key=lambda item: -getattr(item.signals, ranking))]
                picked = [(image, masks_of[image]) for image in order[:k]]
                name = f"k{k}_{ranking}_seed{seed}"
                images, masks = link_folder(picked, args.work / name / "data")
                print(f"{name}: fine-tuning on {len(picked)} photos", file=sys.stderr, flush=True)
                last = fine_tune(images, masks, val, args.work / name / "run", seed, args.steps, args.threads)
                summary = score_model(Predictor.from_path(last), test, name, progress=False).summary
                rows.append((k, ranking, seed, summary))
    print(f"\n{len(test)} held-out photos (IDs {args.test[0]}-{args.test[1]}), model input size; last.pt of each run")
    print("| K | ranking | seed | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---|---|---|" + "---:|" * len(KEYS))
    for k, ranking, seed, summary in rows:
        print(f"| {k} | {ranking} | {seed} | " + " | ".join(f"{summary[key]:.4f}" for key, _ in KEYS) + " |")
    print("\nmeans over the seeds")
    for k in args.k:
        for ranking in args.rankings:
            chosen = [s for kk, r, _, s in rows if kk == k and r == ranking]
            cells = " | ".join(f"{np.mean([s[key] for s in chosen]):.4f}" for key, _ in KEYS)
            print(f"| {k} | {ranking} | mean of {len(chosen)} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
