"""Cut-out quality against rembg with the same weights, on real benchmark pairs, in one run.

For every image of each set, each pipeline makes a mask at the photo's resolution from the bundled
U²-Net† (``u2netp.duts``, the ONNX file rembg's ``u2net_custom`` session loads, on ONNX Runtime both
sides); the masks are scored like ``evaluate.py`` (maxF, MAE, S-measure, Boundary IoU, relaxed boundary F)
and timed (seconds per photo, decoding excluded). Pipelines:

- ``rembg``: rembg's own ``remove(..., only_mask=True)``; ``rembg -a``: with its alpha matting
  (``--matting-limit`` images only: seconds per photo);
- ``ours <mode>``: :class:`~u2net.inference.BackgroundRemover` with the options of each ``--quality`` preset;
- ``--presets``: only these presets (default all three);
- ``--study``: the candidates the presets were chosen from (views × sharpening × upsampling × input resize ×
  second pass);
- ``--int8 FILE``: each preset again on a static int8 file of the same weights, made (calibrated on
  ``duts_tr2k``, no dev-set image) by

      python export_onnx.py weights=u2netp.duts output=u2netp_int8.onnx int8=static calibration.dataset=folder \
          "calibration.dataset_overrides=['data.images=../shared/real/duts_tr2k/images','data.masks=../shared/real/duts_tr2k/masks']"

- ``--providers NAMES --precision P``: each preset again on those ONNX Runtime providers at that precision
  (fp16 or bf16 on ``OpenVINO``, from ``onnxruntime-openvino``: see ``u2net remove --precision``).

    python benchmarks/quality.py --real ../shared/real               # both dev sets, all images
    python benchmarks/quality.py --real ../shared/real --limit 100 --study
    python benchmarks/quality.py --real ../shared/real --int8 u2netp_int8.onnx
    python benchmarks/quality.py --real ../shared/real --providers OpenVINO --precision fp16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from u2net.data import SourceSpec, collect_pairs
from u2net.data.io import read_image, read_mask
from u2net.evaluation.runner import mask_to_uint8
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions
from u2net.inference.options import QUALITY_PRESETS
from u2net.inference.runtime import ONNX_PRECISIONS, provider_names
from u2net.metrics import SaliencyMetrics
from u2net.models.pretrained import bundled_weights_path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
SETS = ("ecssd_dev", "duts_te_dev")
KEYS = (("max_f", "maxF"), ("mae", "MAE"), ("sm", "S"), ("biou", "BIoU"), ("relax_bf", "relax BF"))
Pipeline = Callable[[np.ndarray], np.ndarray]  # H×W×3 uint8 photo -> H×W uint8 mask


def rembg_pipelines(onnx: Path, matting: bool) -> dict[str, Pipeline]:
    from rembg import new_session, remove

    session = new_session("u2net_custom", model_path=str(onnx))

    def plain(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(remove(Image.fromarray(rgb), session=session, only_mask=True))

    def matted(rgb: np.ndarray) -> np.ndarray:
        return np.asarray(remove(Image.fromarray(rgb), session=session, alpha_matting=True))[..., 3]

    return {"rembg": plain, **({"rembg -a": matted} if matting else {})}


def our_pipelines(
    onnx: Path,
    study: bool,
    suffix: str = "",
    providers: list[str] | None = None,
    precision: str = "fp32",
    presets: Sequence[str] = QUALITY_PRESETS,
) -> dict[str, Pipeline]:
    remover = BackgroundRemover(Predictor.from_path(onnx, precision=precision, providers=providers))
    options = {f"ours {name}{suffix}": RemovalOptions.preset(name) for name in presets}
    single = RemovalOptions.preset("fast")  # one view, unsharpened: what the views and the sharpening add to
    if study:
        base = RemovalOptions()
        options.update(
            {
                "study: rembg-compatible (our code)": replace(base, rembg_compatible=True),
                "study: one view, sharpened": replace(base, views=1),
                "study: two views, unsharpened": replace(base, sharpen=1.0),
                "study: two views, sharpen 2": replace(base, sharpen=2.0),
                "study: four views, unsharpened": replace(base, views=4, sharpen=1.0),
                "study: two views, guided upsampling": replace(base, upsampling="guided"),
                "study: four views, guided upsampling": replace(base, views=4, upsampling="guided"),
                "study: one view, OpenCV bilinear both ways (the weights' own)": replace(
                    single, input_resize=None, upsampling="linear"
                ),
                "study: one view, lanczos in, linear out": replace(single, upsampling="linear"),
                "study: one view, lanczos in, cubic out": replace(single, upsampling="cubic"),
                "study: one view, area in": replace(single, input_resize="area"),
                "study: one view, cubic in": replace(single, input_resize="cubic"),
                "study: one view, no stretch": replace(single, stretch=False),
                "study: one view, second pass": replace(single, second_pass=True),
            }
        )
    return {name: (lambda rgb, o=o: remover.mask(rgb, o)) for name, o in options.items()}


def score(pipelines: dict[str, Pipeline], pairs: list, limits: dict[str, int]) -> dict[str, dict[str, float]]:
    """Scores and seconds per photo of each pipeline on ``pairs`` (the first ``limits[name]`` for some)."""
    from tqdm import tqdm

    metrics = {name: SaliencyMetrics() for name in pipelines}
    seconds = dict.fromkeys(pipelines, 0.0)
    for index, (image_path, mask_path) in enumerate(tqdm(pairs, unit="img", file=sys.stderr)):
        rgb, gt = read_image(image_path), mask_to_uint8(read_mask(mask_path))
        for name, pipeline in pipelines.items():
            if index >= limits.get(name, len(pairs)):
                continue
            started = time.perf_counter()
            mask = pipeline(rgb)
            seconds[name] += time.perf_counter() - started
            metrics[name].update(mask, gt)
    results = {}
    for name, m in metrics.items():
        summary = m.results()
        results[name] = {k: float(summary[k]) for k, _ in KEYS} | {
            "s_per_photo": seconds[name] / max(m.n_images, 1),
            "n": m.n_images,
        }
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    sets = list(results)
    header = "| pipeline | " + " | ".join(f"{s} {label}" for s in sets for _, label in KEYS) + " | s/photo |"
    lines = [header, "|---|" + "---:|" * (len(sets) * len(KEYS) + 1)]
    for name in results[sets[0]]:
        cells = [f"{results[s][name][k]:.4f}" for s in sets for k, _ in KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {results[sets[0]][name]['s_per_photo']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "real")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--limit", type=int, default=None, help="first N pairs of each set")
    parser.add_argument("--matting-limit", type=int, default=50, help="images for rembg -a (0: leave it out)")
    parser.add_argument("--study", action="store_true", help="also the candidate pipelines")
    parser.add_argument("--no-rembg", action="store_true")
    parser.add_argument("--presets", nargs="+", default=list(QUALITY_PRESETS), choices=QUALITY_PRESETS)
    parser.add_argument("--int8", type=Path, help="also each preset on this int8 file of the same weights")
    parser.add_argument("--providers", help="also each preset on these ONNX Runtime providers (e.g. OpenVINO)")
    parser.add_argument("--precision", default="fp32", choices=ONNX_PRECISIONS, help="for the --providers rows")
    args = parser.parse_args(argv)
    onnx = bundled_weights_path("u2netp.duts")
    pipelines = {} if args.no_rembg else rembg_pipelines(onnx, args.matting_limit > 0)
    pipelines.update(our_pipelines(onnx, args.study, presets=args.presets))
    if args.int8:
        int8_rows = f", int8 ({args.int8.name})"
        pipelines.update(our_pipelines(args.int8, study=False, suffix=int8_rows, presets=args.presets))
    if args.providers:
        providers = provider_names(args.providers.split(","))
        suffix = f", {args.precision} on {args.providers}"
        pipelines.update(our_pipelines(onnx, False, suffix, providers, args.precision, args.presets))
    limits = {"rembg -a": args.matting_limit}
    results = {}
    for name in args.sets:
        pairs = collect_pairs([SourceSpec(name, str(args.real / name))], check="none", progress=False)
        pairs = pairs[: args.limit] if args.limit else pairs
        print(f"{name}: {len(pairs)} pairs, {len(pipelines)} pipelines", file=sys.stderr, flush=True)
        results[name] = score(pipelines, pairs, limits)
    print(f"\nbundled u2netp ({onnx.name}), ONNX Runtime CPU; rembg -a on the first {args.matting_limit} images")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
