"""Does data loading keep up? Loader images/s (default workers) against the training step's consumption.

Runs the training loader alone for a number of batches (decode, resize, crop, flip, normalise,
collate: what the GPU or CPU would wait for), then the full training step for u2netp, on the same
DUTS-like synthetic images, and prints both side by side.

    python benchmarks/loader_throughput.py
    python benchmarks/loader_throughput.py --workers 0 1 2 4 --batches 30
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import measure_ours  # noqa: E402

from u2net.data import SaliencyDataModule, ensure_synthetic_dataset  # noqa: E402


def measure_loader(root: Path, batch_size: int, workers: int, batches: int) -> float:
    """Images per second delivered by the training loader with ``workers`` worker processes."""
    source = [{"name": "bench", "root": str(root / "DUTS-TR"), "images": "DUTS-TR-Image", "masks": "DUTS-TR-Mask"}]
    data = SaliencyDataModule(train=source, batch_size=batch_size, num_workers=workers, check="none", progress=False)
    data.setup()
    stream = iter(data.train_loader())
    # Worker start-up is not throughput, and neither are the batches the workers prepared meanwhile
    # (prefetch_factor 4 each): drain those first, then time the steady state.
    for _ in range(1 + 4 * workers):
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch_size / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="loader workers (data config default: 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps for the consumption figure")
    parser.add_argument("--data", type=Path, default=Path("data/bench_synthetic"))
    args = parser.parse_args(argv)

    root = ensure_synthetic_dataset(args.data, num_train=64, num_val=0, seed=0, min_size=300, max_size=400)
    rows = [(f"loader, {w} worker(s)", measure_loader(root, args.batch_size, w, args.batches)) for w in args.workers]
    step = measure_ours("u2netp", root, args.batch_size, args.steps, warmup=1, precision="auto")
    rows.append((f"training step u2netp b{args.batch_size} ({step['precision']}, data included)", step["images_per_s"]))
    print("| what | img/s |")
    print("|---|---:|")
    for label, speed in rows:
        print(f"| {label} | {speed:.1f} |")
    margin = rows[0][1] / step["images_per_s"]
    print(f"\nthe loader with {args.workers[0]} worker(s) delivers {margin:.1f}× what the training step consumes")


if __name__ == "__main__":
    main()
