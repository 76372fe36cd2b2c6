"""Time-to-accuracy of fine-tuning the bundled U²-Net† on real data: our preset against the original recipe.

Both arms start from the same weights (``u2netp.duts``, the bundled file) and run ``python train.py`` as a
user would, for a budget of training minutes (``trainer.max_minutes``; validation is not counted), and
validate at fixed minute marks (``trainer.val_every_minutes``):

* ``preset``: ``experiment=finetune`` (see ``configs/experiment/finetune.yaml`` and docs/finetuning.md);
* ``original``: the original recipe from the same start: Adam 1e-3, BCE on the 7 outputs, batch 12,
  vertical flips, fp32, BatchNorm in train mode and no restoration of the folded BatchNorm
  (``experiment=paper_u2netp model.weights=u2netp.duts trainer.restore_bn=false``).

On two tasks: ``ecssd`` (``ecssd_dev``: a fixed 600 / 200 split by seed, with ``--replay`` 20 % of the
draws from duts_tr2k against forgetting, as docs/finetuning.md advises) and ``duts`` (``duts_tr2k`` →
``duts_te_dev``; validation during training on its first 200 images). At the end each arm's best.pt and the
start are scored by the evaluation code (``evaluate.py``'s: predictions at the images' own size) on the
task's validation set and on the other task's (forgetting). Prints Markdown tables and writes
``results.md``, ``results.json`` and ``curves.png`` to ``--out``.

    python benchmarks/finetune_real.py                       # ../shared/real, 20 min per arm
    python benchmarks/finetune_real.py --tasks ecssd --minutes 20 --original-minutes 10 --marks 5
    python benchmarks/finetune_real.py --out DIR --report-only          # tables of the runs already in DIR

The tables are rewritten after every arm, so a run stopped part-way leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
KEYS = ("mae", "max_f", "sm", "biou")
ARMS = {
    "preset": ["experiment=finetune"],
    "original": ["experiment=paper_u2netp", "model.weights=u2netp.duts", "trainer.restore_bn=false"],
}


def ecssd_split(real: Path, seed: int, out: Path) -> Path:
    """ecssd_dev's fixed 600 / 200 split (the held-out fraction 0.25 of ``seed``, as training would draw it)
    as folders of links in ``out``: with a replayed source the validation set must be given apart."""
    from u2net.data import SourceSpec, collect_pairs, split_pairs

    pairs = collect_pairs([SourceSpec("ecssd_dev", str(real / "ecssd_dev"))], check="none", progress=False)
    root = out / "ecssd_split"
    for part, part_pairs in zip(("train", "val"), split_pairs(pairs, 0.25, seed)):
        for kind, index in (("images", 0), ("masks", 1)):
            folder = root / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for pair in part_pairs:
                link = folder / pair[index].name
                if not link.is_symlink():
                    link.symlink_to(pair[index].resolve())
    return root


def task_overrides(real: Path, split: Path, replay: float) -> dict[str, list[str]]:
    """The data overrides of each task (``data=folder``); ``replay``: the share of duts_tr2k draws in ecssd's."""
    tr, te = real / "duts_tr2k", real / "duts_te_dev"
    ecssd = [f"data.{key}={split / part / kind}" for key, part, kind in (
        ("images", "train", "images"), ("masks", "train", "masks"),
        ("val_images", "val", "images"), ("val_masks", "val", "masks"),
    )]  # fmt: skip
    if replay > 0:
        ecssd += [f"data.weight={1 - replay:g}", f"data.train=[{{name: duts_tr2k, root: '{tr}', weight: {replay:g}}}]"]
    return {
        "ecssd": ecssd,
        "duts": [
            f"data.images={tr / 'images'}",
            f"data.masks={tr / 'masks'}",
            f"data.val_images={te / 'images'}",
            f"data.val_masks={te / 'masks'}",
            "data.max_val_samples=200",
        ],
    }


def scoring_sets(real: Path, seed: int) -> dict[str, list]:
    """Full validation sets scored at the end: ecssd's 200 held out (as training holds them out), duts_te_dev."""
    from u2net.data import SourceSpec, collect_pairs, split_pairs

    def pairs(folder: str) -> list:
        return collect_pairs([SourceSpec(folder, str(real / folder))], check="header", progress=False)

    return {"ecssd": split_pairs(pairs("ecssd_dev"), 0.25, seed)[1], "duts": pairs("duts_te_dev")}


def train(arm: str, task: str, minutes: float, args: argparse.Namespace, real: Path) -> Path:
    """Run train.py for one arm and task; returns its run folder."""
    run_dir = args.out / f"{task}_{arm}"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *ARMS[arm],
        "data=folder",
        *task_overrides(real, ecssd_split(real, args.seed, args.out), args.replay)[task],
        f"seed={args.seed}",
        f"trainer.max_minutes={minutes}",
        f"trainer.val_every_minutes={args.marks}",
        "trainer.max_steps=1000000",
        "trainer.val_every=0",
        "trainer.progress=false",
        "trainer.overwrite=true",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    print(f"\n== {task} / {arm}: {minutes:g} training minutes -> {run_dir}", flush=True)
    started = time.perf_counter()
    # Unbuffered, so that each validation line shows as it happens even when the output goes to a file.
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    print(f"   ({(time.perf_counter() - started) / 60:.1f} wall minutes with validation)", flush=True)
    return run_dir


def score(weights: str, sets: dict[str, list]) -> dict[str, dict[str, float]]:
    """evaluate.py's scores of ``weights`` on each set."""
    from u2net.evaluation import score_model
    from u2net.inference import Predictor

    predictor = Predictor.from_path(weights, device="cpu")
    scores = {}
    for name, pairs in sets.items():
        summary = score_model(predictor, pairs, name, progress=False).summary
        scores[name] = {k: float(v) for k, v in summary.items() if k in (*KEYS, "n_images")}
    return scores


def _row(label: str, values: dict, keys=KEYS) -> str:
    return f"| {label} | " + " | ".join(f"{values[k]:.4f}" if k in values else "–" for k in keys) + " |"


def mark_table(histories: dict[tuple[str, str], list[dict]]) -> str:
    """Validation scores at each minute mark, every arm of every task."""
    lines = ["| task / arm / minute (step) | MAE | maxF | S | BIoU |", "|---|---:|---:|---:|---:|"]
    for (task, arm), history in histories.items():
        for row in history:
            label = f"{task} / {arm} / {row['minutes']:.1f} ({row['step']})"
            lines.append(_row(label, row))
            if "ema_mae" in row:
                lines.append(_row(label + " EMA", {k: row[f"ema_{k}"] for k in KEYS if f"ema_{k}" in row}))
    return "\n".join(lines)


def final_table(scores: dict[str, dict[str, dict]]) -> str:
    """Start vs each arm's best.pt on every set (full-resolution scoring)."""
    sets = list(next(iter(scores.values())))
    header = "| weights | " + " | ".join(f"{s} {k}" for s in sets for k in ("MAE", "maxF", "S", "BIoU")) + " |"
    lines = [header, "|---|" + "---:|" * (4 * len(sets))]
    for label, by_set in scores.items():
        cells = [f"{by_set[s][k]:.4f}" for s in sets for k in KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(histories: dict[tuple[str, str], list[dict]], path: Path) -> None:
    """Validation MAE against training minutes, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({task for task, _ in histories})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (t, arm), history in histories.items():
            if t == task:
                ax.plot([r["minutes"] for r in history], [r["mae"] for r in history], marker="o", label=arm)
        ax.set(title=f"{task}: validation MAE", xlabel="training minutes (2-core CPU)", ylabel="MAE")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=REPO.parent / "shared" / "real", help="the real data sets")
    parser.add_argument("--tasks", nargs="+", default=["ecssd", "duts"], choices=["ecssd", "duts"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes of the preset")
    parser.add_argument("--original-minutes", type=float, default=None, help="of the original (default --minutes)")
    parser.add_argument("--duts-minutes", type=float, default=None, help="cap on the duts task (default --minutes)")
    parser.add_argument("--marks", type=float, default=5.0, help="validate every this many training minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replay", type=float, default=0.2, help="share of duts_tr2k draws in the ecssd task (0: ecssd alone)"
    )
    parser.add_argument("--no-scores", action="store_true", help="skip the full-resolution scoring at the end")
    parser.add_argument("--report-only", action="store_true", help="report on the runs already in --out")
    default_out = REPO / "runs" / "benchmarks" / time.strftime("finetune_%Y%m%d-%H%M%S")
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args(argv)
    missing = [d for d in ("ecssd_dev", "duts_te_dev", "duts_tr2k") if not (args.real / d / "images").is_dir()]
    if missing:
        parser.error(f"{args.real}: missing {', '.join(missing)} (images/ + masks/ each)")
    if args.minutes <= 0 or args.marks <= 0:
        parser.error("--minutes and --marks must be positive")
    return args


def write_report(histories: dict, scores: dict, out: Path) -> None:
    """results.md, results.json and curves.png in ``out`` (rewritten after every arm)."""
    report = ["## Validation during training (training minutes; 320² scoring as in training)", mark_table(histories)]
    if scores:
        report += ["## Start vs best.pt on every set (evaluate.py's scoring, full resolution)", final_table(scores)]
    text = "\n\n".join(report) + "\n"
    (out / "results.md").write_text(text)
    serialisable = {"histories": {f"{t}/{a}": h for (t, a), h in histories.items()}, "scores": scores}
    (out / "results.json").write_text(json.dumps(serialisable, indent=1))
    plot(histories, out / "curves.png")
    print("\n" + text + f"\n(written to {out / 'results.md'} and {out / 'curves.png'})", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; results in {args.out}", flush=True)
    sets = scoring_sets(args.real, args.seed)
    start_label = "start (u2netp.duts)"
    histories, scores = {}, ({} if args.no_scores else {start_label: score("u2netp.duts", sets)})
    for task in args.tasks:
        for arm in args.arms:
            minutes = args.original_minutes if arm == "original" and args.original_minutes else args.minutes
            if task == "duts" and args.duts_minutes:
                minutes = min(minutes, args.duts_minutes)
            run_dir = args.out / f"{task}_{arm}"
            if not args.report_only:
                train(arm, task, minutes, args, args.real)
            elif not (run_dir / "checkpoints" / "last.pt").is_file():
                continue
            last = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
            histories[(task, arm)] = last["history"]
            best = run_dir / "checkpoints" / "best.pt"
            source = torch.load(best, map_location="cpu", weights_only=True)["best_source"]
            if not args.no_scores:  # best.pt holding the start's weights scores as the start: not scored again
                by_set = scores[start_label] if source == "start" else score(str(best), sets)
                scores[f"{task} / {arm} best.pt ({source})"] = by_set
            write_report(histories, scores, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
