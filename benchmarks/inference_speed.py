"""Background removal latency: one 1024×768 photo -> RGBA cut-out, for u2net and u2netp.

Side by side in one run, on the same ONNX file where one is used: our remover on PyTorch, on ONNX
Runtime fp32 and on ONNX Runtime int8 (static, QDQ), and rembg's ``u2net_custom`` session with the
fp32 file. Also the mean absolute difference of the int8 alpha against fp32 (target ≤ 0.01).

    python benchmarks/inference_speed.py                       # random weights (timing only)
    python benchmarks/inference_speed.py --weights u2netp=checkpoints/u2netp.pth u2net=checkpoints/u2net.pth
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import u2net
from u2net.export import export_onnx, quantize_static_int8, synthetic_image
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _timed_interleaved(pipelines: dict, runs: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each pipeline, timed in turns (A, B, C, A, B, C, ...) so that a
    change in the machine's load during the run affects all of them alike."""
    for fn in pipelines.values():
        for _ in range(warmup):
            fn()
    times = {label: [] for label in pipelines}
    for _ in range(runs):
        for label, fn in pipelines.items():
            time.sleep(0.2)  # the previous pipeline's thread pool stops spinning before the next starts
            started = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def bench_model(name: str, weights: str | None, photo: np.ndarray, runs: int, workdir: Path) -> list[tuple]:
    """Rows of (model, pipeline, seconds per photo, alpha MAE vs our fp32) for one architecture."""
    if weights:
        model = u2net.load_model(weights)
        ckpt = weights
    else:
        torch.manual_seed(0)
        model = u2net.create_model(name).eval()
        ckpt = str(workdir / f"{name}.pt")
        torch.save({"model": model.state_dict(), "model_name": name}, ckpt)
    fp32 = export_onnx(model, workdir / f"{name}.onnx", input_size=320)
    calibration_predictor = Predictor.from_path(fp32)
    calibration = [calibration_predictor.preprocess(synthetic_image((240, 320), seed=s)) for s in range(8)]
    int8 = quantize_static_int8(fp32, workdir / f"{name}_int8.onnx", calibration)

    removers = {
        "ours, PyTorch fp32": BackgroundRemover(Predictor.from_path(ckpt, device="auto", image_size=320)),
        "ours, ONNX Runtime fp32": BackgroundRemover(Predictor.from_path(fp32)),
        "ours, ONNX Runtime int8": BackgroundRemover(Predictor.from_path(int8)),
    }

    # Our rows: the model's probabilities against fp32's (a random model's near-constant map, once
    # min-max stretched, would magnify any difference). rembg's row: its mask against our default one.
    def alpha(remover: BackgroundRemover, **options) -> np.ndarray:
        return np.asarray(remover.mask(photo, RemovalOptions(**options)), np.float32) / 255

    reference = alpha(removers["ours, ONNX Runtime fp32"], stretch=False)
    maes = {label: float(np.abs(alpha(r, stretch=False) - reference).mean()) for label, r in removers.items()}
    pipelines = {label: (lambda r=remover: r.remove(photo)) for label, remover in removers.items()}

    try:
        from rembg import new_session, remove
    except ImportError:  # e.g. a GPU machine without the dev extras: our rows alone
        print("rembg is not installed: its row is left out", flush=True)
    else:
        os.environ.setdefault("U2NET_HOME", str(workdir))  # rembg must not look for downloads
        session = new_session("u2net_custom", model_path=str(fp32))
        pil = Image.fromarray(photo)
        label = "rembg u2net_custom (same fp32 file)"
        pipelines[label] = lambda: remove(pil, session=session)
        theirs = np.asarray(remove(pil, session=session, only_mask=True), np.float32) / 255
        maes[label] = float(np.abs(theirs - alpha(removers["ours, ONNX Runtime fp32"])).mean())
    seconds = _timed_interleaved(pipelines, runs)
    return [(name, label, seconds[label], maes[label]) for label in pipelines]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["u2netp", "u2net"], choices=u2net.list_models())
    parser.add_argument("--weights", nargs="*", default=[], help="NAME=PATH: trained weights instead of random ones")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.weights):
        parser.error("--weights takes NAME=PATH items, e.g. u2netp=checkpoints/u2netp.pth")
    weights = dict(item.split("=", 1) for item in args.weights)
    photo = synthetic_image((768, 1024), seed=1)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"1024×768 photo -> RGBA, median of {args.runs} runs; PyTorch on {device}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"  {name}: exporting, quantising, timing ...", file=sys.stderr, flush=True)
            rows += bench_model(name, weights.get(name), photo, args.runs, Path(tmp))
    print("| model | pipeline | s/photo | vs rembg | alpha MAE vs ours fp32 |")
    print("|---|---|---:|---:|---:|")
    for name in args.models:
        mine = [r for r in rows if r[0] == name]
        rembg_s = next((r[2] for r in mine if r[1].startswith("rembg")), None)
        for _, label, seconds, mae in mine:
            ratio = f"{seconds / rembg_s:.2f}×" if rembg_s else "–"
            print(f"| {name} | {label} | {seconds:.3f} | {ratio} | {mae:.4f} |")
    print("targets: ONNX fp32 ≤ 0.9× rembg; int8 ≤ 0.5× rembg with alpha MAE ≤ 0.01")


if __name__ == "__main__":
    main()
