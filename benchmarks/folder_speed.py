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
    start-up, decoding, resizing or encoding): what any pipeline with these weights and this runtime pays;
(f) ``u2net remove IN OUT --model u2netp.duts``: every default, as a user runs it (without ``--model``): on a CPU
    ``--precision auto`` runs the tag's bundled int8 file with the ``balanced`` preset.

With ``--int8 FILE`` (a static int8 file of the same weights; see ``benchmarks/quality.py`` for its export
command and its scores), three more rows run (c), (d) and (e) on that file, still against rembg on the fp32
file. With ``--providers`` (ONNX Runtime execution providers, e.g. ``OpenVINO`` from ``onnxruntime-openvino``), four
more rows run rembg's loop, (c), (d) and (e) on those providers, so that both tools get the same runtime; with
``--precision fp16`` (or bf16) ours runs there at that precision (``u2net remove --precision``), rembg at fp32.
With both, three more run (c), (d) and (e) on the int8 file on those providers (OpenVINO's int8 is the fast
route on CPUs without native fp16).

Before the timed runs, each tool runs once, untimed, on three photos (one-time caches). With ``--rounds N`` every
row runs N times, in turns (a, b, ..., a, b, ...), and the table gives the median and
the range: on a shared machine whose speed drifts, one run of each row can mislead.

The model is the bundled ``u2netp.duts`` ONNX file unless ``--model`` is given. The table gives wall seconds,
images per second, the speed-up over rembg, and how far our masks are from rembg's: the mean absolute
difference of the alpha channels in /255, averaged over the images (and the worst image).

    python benchmarks/folder_speed.py                          # 100 photos
    python benchmarks/folder_speed.py --limit 3                # a smoke check
    python benchmarks/folder_speed.py --batch-size 8 --workers 4 --model best.onnx
    python benchmarks/folder_speed.py --providers OpenVINO     # also both tools on OpenVINO
    python benchmarks/folder_speed.py --providers OpenVINO --precision fp16 --rounds 3
    python benchmarks/folder_speed.py --int8 u2netp_int8.onnx  # also ours on an int8 file
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from u2net.inference.runtime import ONNX_PRECISIONS, pick_providers, provider_names
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
session = onnx_session(sys.argv[1], sys.argv[3].split(","), precision=sys.argv[4])
print("providers:", session.get_providers(), file=sys.stderr)
feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 320, 320), np.float32)}
session.run(None, feed)  # warm-up
started = time.perf_counter()
for _ in range(int(sys.argv[2])):
    session.run(None, feed)
print(time.perf_counter() - started)
"""


def model_alone_seconds(
    model: Path, runs: int, env: dict[str, str], providers: str = "CPUExecutionProvider", precision: str = "fp32"
) -> float:
    """Seconds for ``runs`` forward passes of the model alone (see (e) in the module docstring)."""
    command = [sys.executable, "-c", MODEL_ALONE, str(model), str(runs), providers, precision]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
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


def rows_to_time(args: argparse.Namespace, model: Path, providers: str, work: Path, env: dict[str, str]) -> list:
    """The table's rows: (label, output folder or None, a function that runs the row and returns its seconds)."""
    photos_in, runs = work / "in", args.limit
    overlapped = [*(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    overlapped += ["--workers", str(args.workers)] if args.workers is not None else []
    shown = " ".join(overlapped)
    fast = ["--quality", "fast"]

    def ours(label: str, onnx: Path, extra: list[str], out: str) -> tuple:
        return label, out, lambda: run_ours(photos_in, work / out, onnx, env, extra)

    def variant(on: str, onnx: Path, out: str, providers: str = "CPUExecutionProvider", precision: str = "fp32"):
        """(c), (d) and (e) on ``onnx`` with ``providers`` at ``precision``."""
        extra = ["--providers", providers, "--precision", precision] if providers != "CPUExecutionProvider" else []
        return [
            ours(f"(c) on {on}", onnx, [*fast, *overlapped, *extra], f"batch_{out}"),
            ours(f"(d) on {on}", onnx, [*overlapped, *extra], f"default_{out}"),
            (f"(e) on {on}", None, lambda: model_alone_seconds(onnx, runs, env, providers, precision)),
        ]

    rows = [
        ("(a) {how}", "rembg", lambda: run_rembg(photos_in, work / "rembg", model, env)),
        ours(
            "(b) u2net remove --quality fast, sequential", model, [*fast, "--batch-size", "1", "--workers", "0"], "seq"
        ),
        ours(
            f"(c) u2net remove --quality fast, batched + overlapped {shown}".rstrip(),
            model,
            [*fast, *overlapped],
            "batch",
        ),
        ours(
            f"(d) u2net remove (default: balanced), batched + overlapped {shown}".rstrip(), model, overlapped, "default"
        ),
        (f"(e) the model alone, {runs} runs (the floor)", None, lambda: model_alone_seconds(model, runs, env)),
    ]
    if args.model is None:  # the default as a user gets it: the tag, so --precision auto picks its bundled int8 file
        rows.append(
            ours(
                f"(f) u2net remove, all defaults ({DEFAULT_MODEL}: int8 on a CPU) {shown}",
                DEFAULT_MODEL,
                overlapped,
                "defaults",
            )
        )
    int8 = args.int8.resolve() if args.int8 else None
    if int8:
        rows += variant(int8.name, int8, "int8")
    if providers:
        name = providers.replace("ExecutionProvider", "")
        rows.append(
            (
                f"(a) on {name}: {{how}}",
                "rembg_on",
                lambda: run_rembg(photos_in, work / "rembg_on", model, env, providers),
            )
        )
        rows += variant(f"{name}, {args.precision}", model, "on", providers, args.precision)
        if int8:  # an int8 file computes in int8 whatever the precision asked for
            rows += variant(f"{name}, {int8.name}", int8, "int8_on", providers)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=REPO.parent / "shared" / "real", help="the real photo sets")
    parser.add_argument("--limit", type=int, default=100, help="how many photos (default 100)")
    parser.add_argument("--model", type=Path, help=f"an ONNX file (default: the bundled {DEFAULT_MODEL} file)")
    parser.add_argument("--batch-size", type=int, help="(c)'s batch size (default: u2net remove's)")
    parser.add_argument("--workers", type=int, help="(c)'s threads per side (default: u2net remove's)")
    parser.add_argument("--int8", type=Path, help="also (c), (d) and (e) on this int8 file of the same weights")
    parser.add_argument("--providers", help="also rembg, (c), (d) and (e) on these ONNX Runtime providers (OpenVINO)")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=ONNX_PRECISIONS,
        help="ours on --providers at this precision (rembg: fp32)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every row this many times, in turns; the table shows medians"
    )
    args = parser.parse_args(argv)
    providers = ""
    if args.providers:
        wanted = [*provider_names(args.providers.split(",")), "CPUExecutionProvider"]
        if pick_providers(wanted)[0] == "CPUExecutionProvider":
            raise SystemExit(f"--providers: this ONNX Runtime has none of {args.providers}")
        providers = ",".join(dict.fromkeys(pick_providers(wanted)))
    model = (args.model or bundled_weights_path(DEFAULT_MODEL)).resolve()

    with tempfile.TemporaryDirectory(prefix="folder_speed_") as tmp:
        work = Path(tmp)
        photos = gather_photos(args.real, args.limit, work / "in")
        # rembg reads and writes its model cache under U2NET_HOME: a private one, not the user's
        env = {**os.environ, "U2NET_HOME": str(work / "rembg_home"), "ORT_DISABLE_TELEMETRY": "1"}
        rows = rows_to_time(args, model, providers, work, env)
        # one untimed run of each tool on three photos first: one-time costs (numba compiling the pymatting that
        # rembg imports into its cache: a first rembg run took 60 s where the next took 28) would land on round 1
        warm = gather_photos(args.real, 3, work / "warm_in")[0].parent
        run_rembg(warm, work / "warm_rembg", model, env)
        run_ours(warm, work / "warm_ours", model, env, ["--quality", "fast"])
        seconds: dict[str, list[float]] = {label: [] for label, _, _ in rows}
        hows: dict[str, str] = {}
        for _ in range(max(args.rounds, 1)):  # in turns, so that a slow spell of the machine hits every row alike
            for label, out, run in rows:
                if out is not None:
                    shutil.rmtree(work / out, ignore_errors=True)  # u2net remove skips outputs that exist
                result = run()
                if isinstance(result, tuple):  # rembg: (seconds, how it ran)
                    result, hows[label] = result
                seconds[label].append(result)
        table = [
            (label.format(how=hows.get(label, "")), statistics.median(seconds[label]), seconds[label], out)
            for label, out, _ in rows
        ]
        differences = {
            label: alpha_differences(work / out, work / "rembg", photos) if out not in (None, "rembg") else None
            for label, _, _, out in table
        }

    print_table(table, differences, f"{len(photos)} photos, {model.name}, {os.cpu_count()} CPU cores", len(photos))


def print_table(table: list, differences: dict, title: str, count: int) -> None:
    """The markdown table: per row the median wall time (and the range, over several rounds), images per second,
    the speed-up over rembg (the first row) and the alpha difference from rembg's outputs."""
    rembg_s, rounds = table[0][1], len(table[0][2])
    spread = rounds > 1
    print(f"\n{title}" + (f", median of {rounds} rounds" if spread else "") + "\n")
    range_head, range_rule = (" range s |", "---:|") if spread else ("", "")
    print(f"| pipeline | wall s |{range_head} images/s | × rembg | alpha vs rembg (/255, mean per image; worst) |")
    print(f"|---|---:|{range_rule}---:|---:|---|")
    for label, median, runs, _ in table:
        diffs = differences[label]
        compared = "—" if diffs is None else f"{np.mean(diffs):.4f}; {max(diffs):.4f}"
        extent = f" {min(runs):.2f}–{max(runs):.2f} |" if spread else ""
        print(f"| {label} | {median:.2f} |{extent} {count / median:.2f} | {rembg_s / median:.2f} | {compared} |")


if __name__ == "__main__":
    main()
