"""Training throughput: images per second of the whole training step (data loading included).

Ours (albumentations/OpenCV loader with 2 workers, BCE on logits, autocast precision, channels_last)
against a re-implementation of the original U-2-Net recipe (skimage resizing in a single-worker
loader, BCE on sigmoid outputs, fp32; see original_recipe.py), in the same run, on the same DUTS-like
images (synthetic, 300–400 px, made on first use under --data).

    python benchmarks/train_throughput.py                       # u2netp b8 and u2net b4 at 288²
    python benchmarks/train_throughput.py --models u2netp --steps 5 --precisions fp32 auto
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

import u2net
from u2net.data import SaliencyDataModule, ensure_synthetic_dataset
from u2net.device import pick_device, resolve_precision
from u2net.engine import Trainer, TrainerConfig
from u2net.losses import DeepSupervisionLoss

HERE = Path(__file__).resolve().parent
BATCH = {"u2netp": 8, "u2net": 4}
TARGET = {"u2netp": 2.5, "u2net": 1.4}


def _load_original_recipe():
    spec = importlib.util.spec_from_file_location("original_recipe", HERE / "original_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_ours(
    model_name: str, root: Path, batch_size: int, steps: int, warmup: int, precision: str, workers: int = 2
) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of our pipeline; data loading included."""
    source = [{"name": "bench", "root": str(root / "DUTS-TR"), "images": "DUTS-TR-Image", "masks": "DUTS-TR-Mask"}]
    on_cuda = torch.cuda.is_available()
    data = SaliencyDataModule(
        train=source, batch_size=batch_size, num_workers=workers, check="none", progress=False, pin_memory=on_cuda
    )
    model = u2net.create_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if on_cuda else {}))
    config = TrainerConfig(out_dir="/tmp/u2net-bench", precision=precision, channels_last=True, tensorboard=False)
    trainer = Trainer(model, DeepSupervisionLoss(), optimizer, None, data, config)
    data.setup()
    batches = iter(data.train_loader())
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        trainer.train_step([next(batches)])
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    step_s = sum(times) / len(times)
    return {"images_per_s": batch_size / step_s, "step_s": step_s, "precision": trainer.precision}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["u2netp", "u2net"], choices=sorted(BATCH))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (at least 1: start-up costs)")
    parser.add_argument(
        "--precisions", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16", "fp16"], help="ours"
    )
    parser.add_argument("--data", type=Path, default=Path("data/bench_synthetic"))
    parser.add_argument("--skip-original", action="store_true")
    parser.add_argument("--batch-size", type=int, help="batch for every model (default: u2netp 8, u2net 4)")
    parser.add_argument("--workers", type=int, default=2, help="our loader's workers (data config default: 2)")
    args = parser.parse_args(argv)
    device = pick_device()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--steps and --warmup must be at least 1 (the first step pays one-off start-up costs)")
    if "fp16" in args.precisions and device.type != "cuda":
        parser.error(f"fp16 needs CUDA; this machine trains on {device.type}")

    root = ensure_synthetic_dataset(args.data, num_train=64, num_val=0, seed=0, min_size=300, max_size=400)
    images = sorted(str(p) for p in (root / "DUTS-TR" / "DUTS-TR-Image").iterdir())
    masks = sorted(str(p) for p in (root / "DUTS-TR" / "DUTS-TR-Mask").iterdir())
    original = _load_original_recipe()
    print(f"device: {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, 288x288 crops")

    rows = []
    for name in args.models:
        batch = args.batch_size or BATCH[name]
        baseline = None
        if not args.skip_original:
            print(f"  {name}: original recipe ...", file=sys.stderr, flush=True)
            baseline = original.measure_original_throughput(name, images, masks, batch, args.steps, args.warmup)
            rows.append((name, batch, "original (skimage, 1 worker, fp32)", baseline["images_per_s"], 1.0, ""))
        for precision in args.precisions:
            print(f"  {name}: ours {precision} ...", file=sys.stderr, flush=True)
            ours = measure_ours(name, root, batch, args.steps, args.warmup, precision, args.workers)
            ratio = ours["images_per_s"] / baseline["images_per_s"] if baseline else None
            label = f"ours ({resolve_precision(precision, device)}, channels_last, {args.workers} workers)"
            target = ""
            if precision == "auto" and ratio is not None:
                target = f"≥ {TARGET[name]}× {'met' if ratio >= TARGET[name] else 'MISSED'}"
            rows.append((name, batch, label, ours["images_per_s"], ratio, target))

    print()
    print("| model | batch | pipeline | img/s | vs original | target (default precision) |")
    print("|---|---:|---|---:|---:|---|")
    for name, batch, label, speed, ratio, target in rows:
        shown = f"{ratio:.2f}×" if ratio is not None else "–"
        print(f"| {name} | {batch} | {label} | {speed:.2f} | {shown} | {target} |")


if __name__ == "__main__":
    main()
