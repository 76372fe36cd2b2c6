"""Folder throughput: ``rembg p`` against ``u2net remove`` on the same ONNX file and the same photos.

N photos (default 100) from ``--real`` (``ecssd_dev/images``, then ``duts_te_dev/images``) are linked (or
copied) into a temporary input folder; then each pipeline runs once as its own process, timed on the wall
clock from start to exit (interpreter start, imports and model loading included, as a user sees it):

(a) ``rembg p -m u2net_custom -x '{"model_path": ...}' IN OUT`` (where the ``rembg`` command cannot start,
    e.g. a missing optional dependency of its CLI, the same loop as its ``p`` command: ``remove(bytes,
    session)`` per file, through rembg's Python API);
(b) ``u2net remove IN OUT --quality fast --batch-size 1 --workers 0``: fp32, one model run per photo (as
    rembg), one photo after another;
(c) ``u2net remove IN OUT --quality fast``: batched, decoding and encoding overlapped in threads;
(d) ``u2net remove IN OUT``: the default preset (``balanced``: two model runs per photo, see docs/quality.md);
(e) the floor: the model alone, N runs of the ONNX file on a 320² input in one ONNX Runtime session (no
    start-up, decoding, resizing or encoding): what any pipeline with these weights and this runtime pays.

With ``--int8 FILE`` (a static int8 file of the same weights; see ``benchmarks/quality.py`` for its export
command and its scores), three more rows run (c), (d) and (e) on that file, still against rembg on the fp32
file. With ``--providers`` (ONNX Runtime execution providers, e.g. ``OpenVINO`` from ``onnxruntime-openvino``), three
more rows run rembg's loop, (c) and (e) on those providers, so that both tools get the same runtime.

The model is the bundled ``u2netp.duts`` ONNX file unless ``--model`` is given. The table gives wall seconds,
images per second, the speed-up over rembg, and how far our masks are from rembg's: the mean absolute
difference of the alpha channels in /255, averaged over the images (and the worst image).

    python benchmarks/folder_speed.py                          # 100 photos
    python benchmarks/folder_speed.py --limit 3                # a smoke check
    python benchmarks/folder_speed.py --batch-size 8 --workers 4 --model best.onnx
    python benchmarks/folder_speed.py --providers OpenVINO     # also both tools on OpenVINO
    python benchmarks/folder_speed.py --int8 u2netp_int8.onnx  # also ours on an int8 file
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from u2net.inference.runtime import pick_providers, provider_names
from u2net.models.pretrained import DEFAULT_MODEL, bundled_weights_path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("ecssd_dev/images", "duts_te_dev/images")  # in this order, under --real
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")

# rembg's ``p`` command without its CLI: what it does for each file of a folder.
REMBG_P_LOOP = """
import pathlib, sys
from rembg import new_session, remove
src, dst, model_path = map(pathlib.Path, sys.argv[1:4])
providers = sys.argv[4].split(",") if len(sys.argv) > 4 else None  # None: rembg's own choice
session = new_session("u2net_custom", model_path=str(model_path), **({"providers": providers} if providers else {}))
dst.mkdir(parents=True, exist_ok=True)
for path in sorted(p for p in src.glob("**/*") if p.is_file()):
    (dst / path.name).with_suffix(".png").write_bytes(remove(path.read_bytes(), session=session))
"""


def gather_photos(real: Path, limit: int, into: Path) -> list[Path]:
    """Hard-link (or copy) the first ``limit`` photos of :data:`SOURCES` into ``into``; their new paths."""
    into.mkdir(parents=True)
    found = [p for source in SOURCES for p in sorted((real / source).glob("*")) if p.suffix.lower() in PHOTO_SUFFIXES]
    if len(found) < limit:
        raise SystemExit(f"{real}: {len(found)} photos under {', '.join(SOURCES)}, {limit} asked for")
    placed = []
    for index, photo in enumerate(found[:limit]):
        target = into / f"{index:04d}_{photo.name}"  # both sets number their files alike
        try:
            os.link(photo, target)
        except OSError:
            shutil.copyfile(photo, target)
        placed.append(target)
    return placed


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``command`` to its end (a progress line on stderr first); its wall seconds and result."""
    print(
        f"timing: {' '.join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command))[:160]}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    print(f"  {seconds:.2f} s", file=sys.stderr, flush=True)
    return seconds, done


def run_rembg(src: Path, dst: Path, model: Path, env: dict[str, str], providers: str = "") -> tuple[float, str]:
    """Seconds for rembg on the folder, and how it ran (its ``p`` command, or the same loop in Python; always the
    loop for ``providers``, full ONNX Runtime provider names joined by commas, which its CLI cannot take)."""
    if shutil.which("rembg") and not providers:
        extra = json.dumps({"model_path": str(model)})
        seconds, done = timed(["rembg", "p", "-m", "u2net_custom", "-x", extra, str(src), str(dst)], env)
        if done.returncode == 0:
            return seconds, "rembg p"
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        print(f"rembg p could not run ({why}); timing the same loop through rembg's Python API", file=sys.stderr)
        shutil.rmtree(dst, ignore_errors=True)
    loop = [sys.executable, "-c", REMBG_P_LOOP, str(src), str(dst), str(model), *([providers] if providers else [])]
    seconds, done = timed(loop, env)
    if done.returncode != 0:
        raise SystemExit(f"rembg failed: {done.stderr.strip()[-2000:]}")
    return seconds, "rembg p's loop (Python API)"


def run_ours(src: Path, dst: Path, model: Path, env: dict[str, str], extra: list[str]) -> float:
    command = [sys.executable, "-m", "u2net.cli", "remove", str(src), str(dst), "--model", str(model)]
    seconds, done = timed([*command, "--backend", "onnxruntime", "-q", *extra], env)
    if done.returncode != 0:
        raise SystemExit(f"u2net remove failed: {done.stderr.strip()[-2000:]}{done.stdout.strip()[-2000:]}")
    return seconds


MODEL_ALONE = """
import sys, time, numpy as np
from u2net.inference.runtime import onnx_session
session = onnx_session(sys.argv[1], sys.argv[3].split(","))
print("providers:", session.get_providers(), file=sys.stderr)
feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 320, 320), np.float32)}
session.run(None, feed)  # warm-up
started = time.perf_counter()
for _ in range(int(sys.argv[2])):
    session.run(None, feed)
print(time.perf_counter() - started)
"""


def model_alone_seconds(model: Path, runs: int, env: dict[str, str], providers: str = "CPUExecutionProvider") -> float:
    """Seconds for ``runs`` forward passes of the model alone (see (e) in the module docstring)."""
    done = subprocess.run(
        [sys.executable, "-c", MODEL_ALONE, str(model), str(runs), providers], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise SystemExit(f"timing the model failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def alpha_differences(ours: Path, theirs: Path, photos: list[Path]) -> list[float]:
    """Per photo: mean |our alpha - rembg's alpha| / 255."""
    differences = []
    for photo in photos:
        name = f"{photo.stem}.png"
        with Image.open(ours / name) as a, Image.open(theirs / name) as b:
            mine, other = np.asarray(a.getchannel("A"), np.float32), np.asarray(b.getchannel("A"), np.float32)
        differences.append(float(np.abs(mine - other).mean()) / 255.0)
    return differences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=REPO.parent / "shared" / "real", help="the real photo sets")
    parser.add_argument("--limit", type=int, default=100, help="how many photos (default 100)")
    parser.add_argument("--model", type=Path, help=f"an ONNX file (default: the bundled {DEFAULT_MODEL} file)")
    parser.add_argument("--batch-size", type=int, help="(c)'s batch size (default: u2net remove's)")
    parser.add_argument("--workers", type=int, help="(c)'s threads per side (default: u2net remove's)")
    parser.add_argument("--int8", type=Path, help="also (c), (d) and (e) on this int8 file of the same weights")
    parser.add_argument("--providers", help="also rembg, (c) and (e) on these ONNX Runtime providers (OpenVINO)")
    args = parser.parse_args(argv)
    providers = ""
    if args.providers:
        wanted = [*provider_names(args.providers.split(",")), "CPUExecutionProvider"]
        if pick_providers(wanted)[0] == "CPUExecutionProvider":
            raise SystemExit(f"--providers: this ONNX Runtime has none of {args.providers}")
        providers = ",".join(dict.fromkeys(pick_providers(wanted)))
    model = (args.model or bundled_weights_path(DEFAULT_MODEL)).resolve()
    overlapped = [*(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    overlapped += ["--workers", str(args.workers)] if args.workers is not None else []

    with tempfile.TemporaryDirectory(prefix="folder_speed_") as tmp:
        work = Path(tmp)
        photos = gather_photos(args.real, args.limit, work / "in")
        # rembg reads and writes its model cache under U2NET_HOME: a private one, not the user's
        env = {**os.environ, "U2NET_HOME": str(work / "rembg_home"), "ORT_DISABLE_TELEMETRY": "1"}
        rembg_s, how = run_rembg(work / "in", work / "rembg", model, env)
        rows = [(f"(a) {how}", rembg_s, None)]
        fast = ["--quality", "fast"]
        sequential = [*fast, "--batch-size", "1", "--workers", "0"]
        for label, extra, out in (
            ("(b) u2net remove --quality fast, sequential", sequential, "seq"),
            (
                f"(c) u2net remove --quality fast, batched + overlapped {' '.join(overlapped)}".rstrip(),
                [*fast, *overlapped],
                "batch",
            ),
            (
                f"(d) u2net remove (default: balanced), batched + overlapped {' '.join(overlapped)}".rstrip(),
                overlapped,
                "default",
            ),
        ):
            seconds = run_ours(work / "in", work / out, model, env, extra)
            rows.append((label, seconds, alpha_differences(work / out, work / "rembg", photos)))
        rows.append(
            (f"(e) the model alone, {len(photos)} runs (the floor)", model_alone_seconds(model, len(photos), env), None)
        )
        if args.int8:
            int8 = args.int8.resolve()
            for label, extra, out in (("(c)", [*fast, *overlapped], "batch_int8"), ("(d)", overlapped, "default_int8")):
                seconds = run_ours(work / "in", work / out, int8, env, extra)
                rows.append((f"{label} on {int8.name}", seconds, alpha_differences(work / out, work / "rembg", photos)))
            rows.append((f"(e) on {int8.name}", model_alone_seconds(int8, len(photos), env), None))
        if providers:
            shown = providers.replace("ExecutionProvider", "")
            seconds, how = run_rembg(work / "in", work / "rembg_on", model, env, providers)
            differences = alpha_differences(work / "rembg_on", work / "rembg", photos)
            rows.append((f"(a) on {shown}: {how}", seconds, differences))
            on = ["--providers", providers]
            seconds = run_ours(work / "in", work / "batch_on", model, env, [*fast, *overlapped, *on])
            rows.append((f"(c) on {shown}", seconds, alpha_differences(work / "batch_on", work / "rembg", photos)))
            floor = model_alone_seconds(model, len(photos), env, providers)
            rows.append((f"(e) on {shown}", floor, None))

    print(f"\n{len(photos)} photos, {model.name}, {os.cpu_count()} CPU cores\n")
    print("| pipeline | wall s | images/s | × rembg | alpha vs rembg (/255, mean per image; worst) |")
    print("|---|---:|---:|---:|---|")
    for label, seconds, diffs in rows:
        compared = "—" if diffs is None else f"{np.mean(diffs):.4f}; {max(diffs):.4f}"
        print(f"| {label} | {seconds:.2f} | {len(photos) / seconds:.2f} | {rembg_s / seconds:.2f} | {compared} |")


if __name__ == "__main__":
    main()
