"""Peak memory of ``remove_batch`` on a folder of large images: sequential, pipelined within the byte budget
(the default), and pipelined without it (bounded in images only, as before issue 24).

Generates ``--count`` JPEGs of ``--size`` (default 8 of 6000×4000, 24 MP) in a temporary folder,
then runs each row in a fresh process (the bundled model unless ``--model``) and prints a markdown table of
wall time and peak RSS, also above the RSS of the loaded model after one small warm-up image.

    python benchmarks/folder_memory.py
    python benchmarks/folder_memory.py --count 8 --size 4000x3000 --budget 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from u2net.inference.batch import DEFAULT_MEMORY_BUDGET, DEFAULT_WORKERS
from u2net.models.pretrained import DEFAULT_MODEL

# One row, in a process of its own (ru_maxrss is the process's peak): the model's RSS after a warm-up image,
# then the folder. remove_batch takes its budget from DEFAULT_MEMORY_BUDGET, so a row sets that.
ROW = """
import json, resource, sys, time
import numpy as np
from PIL import Image
import u2net.inference.batch as batch
from u2net.inference import BackgroundRemover, remove_batch
src, dst, warm, model, workers, budget = sys.argv[1:7]
remover = BackgroundRemover.from_path(model)
Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(warm + "/warm.png")
remove_batch(remover, warm, warm + "/out", progress=False, overwrite=True)
model_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
batch.DEFAULT_MEMORY_BUDGET = int(budget)
started = time.perf_counter()
report = remove_batch(remover, src, dst, progress=False, workers=None if workers == "default" else int(workers))
seconds = time.perf_counter() - started
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "model_kb": model_kb, "peak_kb": peak_kb, "done": report.done,
                  "failed": report.failed}))
"""

UNBOUNDED = 1 << 62  # a budget no folder reaches: the items are bounded in number only


def photos(folder: Path, count: int, width: int, height: int) -> None:
    """``count`` JPEGs of smooth random colour fields (noise, upscaled: per-pixel noise would make every PNG
    output incompressible and the run several times slower, for the same memory)."""
    folder.mkdir(parents=True)
    for i in range(count):
        field = np.random.default_rng(i).integers(0, 256, (max(1, height // 100), max(1, width // 100), 3), np.uint8)
        image = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 90])


def run_row(work: Path, label: str, model: str, workers: str, budget: int) -> dict:
    """Run one row in a fresh process; its measurements."""
    print(f"running: {label}", file=sys.stderr, flush=True)
    warm = work / f"warm_{label}"
    warm.mkdir()
    command = [sys.executable, "-c", ROW, str(work / "in"), str(work / f"out_{label}"), str(warm), model, workers]
    done = subprocess.run([*command, str(budget)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=8, help="how many images (default 8)")
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of each image (default 6000x4000)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a model tag or file (default {DEFAULT_MODEL})")
    parser.add_argument("--budget", type=int, help="the budgeted rows' budget in MiB (default: the library's)")
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.lower().split("x"))
    budget = args.budget << 20 if args.budget is not None else DEFAULT_MEMORY_BUDGET
    rows = [
        ("sequential (--workers 0)", "0", budget),
        (f"default ({DEFAULT_WORKERS} workers), budget {budget / 2**30:.2f} GiB", "default", budget),
        (f"default ({DEFAULT_WORKERS} workers), no budget (before)", "default", UNBOUNDED),
    ]
    with tempfile.TemporaryDirectory(prefix="folder_memory_") as tmp:
        work = Path(tmp)
        print(f"writing {args.count} images of {width}×{height}", file=sys.stderr, flush=True)
        photos(work / "in", args.count, width, height)
        results = [run_row(work, str(i), args.model, workers, b) for i, (_, workers, b) in enumerate(rows)]

    title = f"{args.count} images of {width}×{height} ({width * height / 1e6:.0f} MP), {args.model}"
    print(f"\n{title}, {os.cpu_count()} CPU cores\n")
    print("| run | wall s | peak RSS GB | above the loaded model GB | written |")
    print("|---|---:|---:|---:|---:|")
    for (label, _, _), r in zip(rows, results):
        peak, model, total = r["peak_kb"] * 1024 / 1e9, r["model_kb"] * 1024 / 1e9, r["done"] + r["failed"]
        print(f"| {label} | {r['seconds']:.1f} | {peak:.2f} | {peak - model:.2f} | {r['done']}/{total} |")


if __name__ == "__main__":
    main()
