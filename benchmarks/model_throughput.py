"""Model throughput on one device, without the data loader: training steps and batched inference.

Training runs our ``Trainer.train_step`` (forward, deep-supervision BCE on logits, backward, Adam,
fused on CUDA) on a batch already on the device, at 288² (the training crop). Inference runs the fused
output of a batch at 320² (the inference size) under ``torch.inference_mode``. Each model in fp32,
bf16 autocast and bf16 + ``torch.compile``, channels_last throughout.

FLOPs are counted by ``torch.utils.flop_counter`` on the model itself (forward; forward + backward for
training) and the achieved TFLOP/s are set against the card's dense tensor-core peak: bf16 for the bf16
rows, TF32 for fp32 rows (cuDNN runs fp32 convolutions in TF32 by default on Ampere and newer).

    python benchmarks/model_throughput.py                                  # on the best device
    python benchmarks/model_throughput.py --models u2netp --modes infer --precisions bf16 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import u2net
from u2net.data import SaliencyDataModule
from u2net.device import pick_device
from u2net.engine import Trainer, TrainerConfig, autocast_context
from u2net.losses import DeepSupervisionLoss

TRAIN_SIZE, INFER_SIZE = 288, 320
TRAIN_BATCH = {"u2netp": 32, "u2net": 16}
INFER_BATCH = {"u2netp": 64, "u2net": 32}

# Dense tensor-core peaks in TFLOP/s (bf16, tf32) from the vendors' data sheets, by device-name fragment.
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    "H200": (989.4, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.1, 183.0),
    "L4": (121.0, 60.0),
    "A10": (125.0, 62.5),
    "4090": (165.2, 82.6),
}


def card_peak(device: torch.device, override: float | None) -> tuple[float, float] | None:
    """(bf16, tf32) peak TFLOP/s of ``device``; None where unknown (CPUs, unlisted cards)."""
    if override:
        return override, override / 2
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS.items() if fragment in name), None)


def count_flops(model_name: str, size: int, train: bool) -> float:
    """FLOPs per image of one forward pass (``train``: forward + backward) at ``size``²."""
    model = u2net.create_model(model_name)
    x = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        if train:
            sum(o.float().mean() for o in model(x)).backward()
        else:
            with torch.no_grad():
                model(x)
    return float(counter.get_total_flops())


def _time_loop(step, steps: int, warmup: int, device: torch.device, profile: bool = False) -> float:
    """Median seconds per call of ``step`` after ``warmup`` calls (compilation, cuDNN autotuning);
    ``profile``: then three more calls under the profiler, the top operators printed to stderr."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        activities += [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(3):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=15), file=sys.stderr)
    return statistics.median(times)


def measure_train(
    model_name: str, batch: int, precision: str, compile: bool, steps: int, warmup: int, layout: str, profile: bool
) -> float:
    """Seconds per training step on a device-resident batch, through our Trainer."""
    torch.manual_seed(0)
    model = u2net.create_model(model_name)
    device = pick_device()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, **fused)
    config = TrainerConfig(
        out_dir="/tmp/u2net-bench",
        precision=precision,
        channels_last=layout == "channels_last",
        compile=compile,
        tensorboard=False,
    )
    trainer = Trainer(model, DeepSupervisionLoss(), optimizer, None, SaliencyDataModule(), config)
    images = torch.randn(batch, 3, TRAIN_SIZE, TRAIN_SIZE, device=trainer.device)
    masks = (torch.rand(batch, 1, TRAIN_SIZE, TRAIN_SIZE, device=trainer.device) > 0.5).float()
    group = [{"image": images, "mask": masks}]
    return _time_loop(lambda: trainer.train_step(group), steps, warmup, trainer.device, profile)


def measure_infer(
    model_name: str, batch: int, precision: str, compile: bool, steps: int, warmup: int, layout: str, profile: bool
) -> float:
    """Seconds per batched forward pass (fused probability map) at the inference size."""
    device = pick_device()
    torch.manual_seed(0)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = u2net.create_model(model_name).eval().to(device, memory_format=memory_format)
    forward = torch.compile(model) if compile else model
    images = torch.randn(batch, 3, INFER_SIZE, INFER_SIZE, device=device).contiguous(memory_format=memory_format)

    def step() -> None:
        with torch.inference_mode(), autocast_context(device, precision):
            torch.sigmoid(forward(images)[0].float())

    return _time_loop(step, steps, warmup, device, profile)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["u2netp", "u2net"], choices=sorted(TRAIN_BATCH))
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16", "bf16+compile"], choices=["fp32", "bf16", "bf16+compile"]
    )
    parser.add_argument("--train-batch", type=int, help="training batch (default: u2netp 32, u2net 16)")
    parser.add_argument("--infer-batch", type=int, help="inference batch (default: u2netp 64, u2net 32)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (median counts)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    parser.add_argument("--layout", choices=["channels_last", "contiguous"], default="channels_last")
    parser.add_argument("--profile", action="store_true", help="print each configuration's top operators")
    parser.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, where it is not in the table")
    args = parser.parse_args(argv)

    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = card_peak(device, args.peak_tflops)
    print(f"device: {name}; torch {torch.__version__}; {args.layout}; peak bf16/tf32 TFLOP/s: {peak or 'unknown'}")
    if device.type != "cuda":
        print(
            "note: no CUDA GPU; this benchmark is meant for one. On a CPU the defaults take an hour or more: try "
            "--train-batch 2 --infer-batch 2 --steps 2 --warmup 1 --precisions fp32",
            file=sys.stderr,
        )
    rows = []
    for model_name in args.models:
        for mode in args.modes:
            size = TRAIN_SIZE if mode == "train" else INFER_SIZE
            flops = count_flops(model_name, size, train=mode == "train")
            default_batch = (TRAIN_BATCH if mode == "train" else INFER_BATCH)[model_name]
            batch = (args.train_batch if mode == "train" else args.infer_batch) or default_batch
            measure = measure_train if mode == "train" else measure_infer
            for label in args.precisions:
                precision, compiled = label.split("+")[0], label.endswith("+compile")
                print(f"  {model_name} {mode} {label} (batch {batch}) ...", file=sys.stderr, flush=True)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = measure(
                    model_name, batch, precision, compiled, args.steps, args.warmup, args.layout, args.profile
                )
                memory = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "–"
                tflops = flops * batch / seconds / 1e12
                card = peak[0 if precision == "bf16" else 1] if peak else None
                share = f"{100 * tflops / card:.1f} %" if card else "–"
                rows.append((model_name, mode, size, batch, label, batch / seconds, flops / 1e9, tflops, share, memory))
                print(f"    {batch / seconds:.1f} img/s, {tflops:.1f} TFLOP/s", file=sys.stderr, flush=True)
                torch._dynamo.reset()

    print()
    print("| model | mode | size | batch | precision | img/s | GFLOP/img | TFLOP/s | of peak | peak mem GiB |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for model_name, mode, size, batch, label, speed, gflop, tflops, share, memory in rows:
        print(
            f"| {model_name} | {mode} | {size}² | {batch} | {label} | {speed:.1f} | {gflop:.1f} | {tflops:.1f} "
            f"| {share} | {memory} |"
        )


if __name__ == "__main__":
    main()
