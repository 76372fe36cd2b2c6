"""Load test of ``u2net serve``: N requests at concurrency C against a local server.

Starts the server in a subprocess on 127.0.0.1 (a random-weight u2netp checkpoint at 320 px unless
``--model`` is given), warms it up, then sends ``--requests`` POST /remove-background requests with
``--concurrency`` in flight, and prints throughput, latency percentiles, errors and the server's
resident memory (VmRSS sampled every 50 ms from /proc: after warm-up, peak, end, and at each fifth of
the run, to show whether memory stays flat).

    python benchmarks/serve_load.py                                   # 500 requests, concurrency 8
    python benchmarks/serve_load.py --requests 200 --concurrency 4 --workers 2 --image photo.jpg
    python benchmarks/serve_load.py --model best.onnx --size 1280x960

Target (issue "Serving"): 0 errors and flat memory over 500 requests at concurrency 8 with u2netp.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def make_checkpoint(path: Path, size: int) -> Path:
    import torch

    import u2net

    torch.manual_seed(0)
    preprocessing = {"image_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    torch.save(
        {"model": u2net.create_model("u2netp").state_dict(), "model_name": "u2netp", "preprocessing": preprocessing},
        path,
    )
    return path


def make_photo(width: int, height: int) -> bytes:
    """A JPEG like an upload: a subject on a gradient, with some noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    gradient = np.linspace(30, 220, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    noisy = gradient * [0.6, 0.8, 1.0] + rng.normal(0, 8, (height, width, 3))
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.3, height * 0.15, width * 0.7, height * 0.85), fill=(230, 120, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` s; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stop = threading.Event()

    def reset(self) -> None:
        self.peak = rss_mb(self.pid) or 0.0

    def run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


def start_server(args, model: Path, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "u2net.cli", "serve", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(args.workers), "--device", args.device, "--log-level", "warning"]
    command += ["--max-queue", str(max(64, 2 * args.concurrency))]
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


async def load(base: str, photo: bytes, requests: int, concurrency: int, on_done=None) -> tuple[list[float], list[str]]:
    """Latencies (s) of the successful requests and the errors, ``concurrency`` requests in flight."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in counter:
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/remove-background", files={"file": ("photo.jpg", photo, "image/jpeg")}
                    )
                    if response.status_code == 200 and response.content.startswith(b"\x89PNG"):
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors.append(f"{response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                if on_done is not None:
                    on_done(len(latencies) + len(errors))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model to serve (default: random-weight u2netp at --input-size)")
    parser.add_argument("--input-size", type=int, default=320, help="input size of the default model (320)")
    parser.add_argument("--requests", "-n", type=int, default=500)
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="server inference threads (2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image", type=Path, help="image to send (default: a synthetic JPEG of --size)")
    parser.add_argument("--size", default="800x600", help="size of the synthetic image, WxH (800x600)")
    parser.add_argument("--warmup", type=int, default=16, help="requests before measuring (16)")
    args = parser.parse_args(argv)

    if args.image is not None:
        photo = args.image.read_bytes()
        shown = f"{args.image.name} ({len(photo) / 1024:.0f} KB)"
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        photo = make_photo(width, height)
        shown = f"synthetic {width}x{height} JPEG ({len(photo) / 1024:.0f} KB)"

    with tempfile.TemporaryDirectory(prefix="u2net-serve-load-") as tmp:
        model = args.model or make_checkpoint(Path(tmp) / "u2netp-random.pt", args.input_size)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_server(args, model, port)
        sampler = RssSampler(process.pid)
        try:
            wait_ready(base, process)
            info = httpx.get(base + "/model-info", timeout=5).json()
            rss_loaded = rss_mb(process.pid)
            sampler.start()
            _, warm_errors = asyncio.run(load(base, photo, args.warmup, min(args.concurrency, args.warmup)))
            if warm_errors:
                print(f"warm-up errors: {warm_errors[:3]}", file=sys.stderr)
            time.sleep(0.3)
            rss_start = rss_mb(process.pid)
            sampler.reset()
            marks: list[float] = []
            fifths = {round(args.requests * k / 5) for k in range(1, 6)} - {0}

            def on_done(count: int) -> None:
                if count in fifths:
                    marks.append(rss_mb(process.pid) or float("nan"))
                    print(f"  {count}/{args.requests} requests done", file=sys.stderr, flush=True)

            started = time.perf_counter()
            latencies, errors = asyncio.run(load(base, photo, args.requests, args.concurrency, on_done))
            elapsed = time.perf_counter() - started
            time.sleep(0.3)
            rss_end = rss_mb(process.pid)
            peak = sampler.peak
        finally:
            sampler.stop()
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    ms = [1000 * v for v in latencies]
    print(
        f"\nu2net serve load test: {info.get('name')} ({info.get('input_size')} px, {info.get('backend')}), "
        f"{args.workers} inference workers, {shown}, {os.cpu_count()} CPU cores\n"
    )
    rows = [
        ("requests", f"{args.requests} (after {args.warmup} warm-up)"),
        ("concurrency", str(args.concurrency)),
        ("wall time", f"{elapsed:.1f} s"),
        ("throughput", f"{len(latencies) / elapsed:.2f} req/s"),
        ("latency p50", f"{percentile(ms, 50):.0f} ms"),
        ("latency p95", f"{percentile(ms, 95):.0f} ms"),
        ("latency p99 / max", f"{percentile(ms, 99):.0f} / {max(ms, default=float('nan')):.0f} ms"),
        ("latency mean ± sd", f"{statistics.fmean(ms):.0f} ± {statistics.pstdev(ms):.0f} ms" if ms else "n/a"),
        ("errors", str(len(errors))),
        ("server RSS: model loaded", f"{rss_loaded:.0f} MB"),
        ("server RSS: start (after warm-up)", f"{rss_start:.0f} MB"),
        ("server RSS: peak during run", f"{peak:.0f} MB"),
        ("server RSS: end", f"{rss_end:.0f} MB"),
        ("server RSS at each 1/5 of the run", " → ".join(f"{v:.0f}" for v in marks) + " MB"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"| {'metric':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    for error in errors[:5]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
