"""Metric speed: u2net.metrics against PySODMetrics on the same images, with the largest value difference.

Synthetic DUTS-like pairs (seeded numpy): ground truths made of a few elliptic blobs, some cut by the frame;
predictions are the blurred mask at a random strength plus Gaussian noise and a false-positive blob. Each metric of
PySODMetrics (``MAE``, ``Fmeasure``, ``WeightedFmeasure``, ``Smeasure``, ``Emeasure``: the six standard SOD scores
with their curves) is timed on its own; ours is timed per metric on a shared :class:`~u2net.metrics.PreparedPair`
(the one pass over the image, its own row) and end to end. The last row times our full set (plus IoU / Dice curves,
relaxed boundary F and Boundary IoU), for information. Times are the best of ``--repeats`` runs, in ms per image.

    python benchmarks/metrics_speed.py                      # 30 images at 320², 10 at 1000² (~20 s on 2 cores)
    python benchmarks/metrics_speed.py --sizes 320 --images 100 --threads 1
"""

from __future__ import annotations

import argparse
import time
import warnings
from importlib.metadata import version

import cv2
import numpy as np

from u2net.metrics import PreparedPair, SaliencyMetrics
from u2net.metrics import pixelwise as px
from u2net.metrics.structure import s_measure, weighted_f_measure


def make_pairs(size: int, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (pred, gt) uint8 pairs of ``size``² pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    pairs = []
    for _ in range(n):
        gt = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2)
            ry, rx = rng.uniform(0.05, 0.35, 2)
            gt |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        fake = ((yy - rng.uniform()) / 0.05) ** 2 + ((xx - rng.uniform()) / 0.08) ** 2 < 1
        soft = gt * rng.uniform(150, 255) + fake * rng.uniform(0, 120)
        soft = cv2.GaussianBlur(soft.astype(np.float32), (0, 0), size * rng.uniform(0.002, 0.02))
        pred = np.clip(soft + rng.normal(rng.uniform(0, 30), rng.uniform(2, 30), gt.shape), 0, 255).astype(np.uint8)
        pairs.append((pred, gt.astype(np.uint8) * 255))
    return pairs


def _pysod(pairs, repeats: int) -> tuple[dict[str, float], dict]:
    """Best-of-repeats seconds per image of each PySODMetrics class, and the per-image values and curves."""
    import py_sod_metrics as psm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Fmeasure will be removed", empty-slice warnings of the S-measure
        classes = {"MAE": psm.MAE, "F": psm.Fmeasure, "Fw": psm.WeightedFmeasure, "S": psm.Smeasure, "E": psm.Emeasure}
        times, done = {}, {}
        for name, cls in classes.items():
            best = float("inf")
            for _ in range(repeats):
                metric = cls()
                started = time.perf_counter()
                for pred, gt in pairs:
                    metric.step(pred=pred, gt=gt)
                best = min(best, time.perf_counter() - started)
            times[name], done[name] = best / len(pairs), metric
    m, f, fw, s, e = (done[k] for k in classes)
    values = {
        "mae": np.array(m.maes),
        "max_f": np.array([c.max() for c in f.changeable_fms]),
        "mean_f": np.array([c.mean() for c in f.changeable_fms]),
        "adp_f": np.array(f.adaptive_fms, dtype=float),
        "f_curve": np.mean(f.changeable_fms, axis=0),
        "precision": np.mean(f.precisions, axis=0),
        "recall": np.mean(f.recalls, axis=0),
        "wfm": np.array(fw.weighted_fms, dtype=float),
        "sm": np.array(s.sms, dtype=float),
        "max_em": np.array([c.max() for c in e.changeable_ems]),
        "mean_em": np.array([c.mean() for c in e.changeable_ems]),
        "adp_em": np.array(e.adaptive_ems, dtype=float),
        "e_curve": np.mean(e.changeable_ems, axis=0),
    }
    return times, values


def _standard(pair: PreparedPair) -> None:
    """Our MAE, F (curves, adaptive), weighted F, S and E (curves, adaptive) of one prepared pair."""
    counts = px.ThresholdCounts(pair)
    px.mae(pair)
    px.f_curve(counts, 0.3)
    px.e_curve(counts)
    tp, fp = px.adaptive_counts(pair)
    px.adaptive_f(pair, tp, fp, 0.3)
    px.adaptive_em(pair, tp, fp)
    s_measure(pair)
    weighted_f_measure(pair)


def _ours(pairs, repeats: int) -> tuple[dict[str, float], dict]:
    """Best-of-repeats seconds per image: per metric on shared pairs, end to end, full set; and our values."""

    def best_of(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return best / len(pairs)

    # the one pass over the image: histograms, plus the float image the weighted F-measure reads
    times = {"pass": best_of(lambda: [PreparedPair(p, g).pred for p, g in pairs])}

    def per_metric(name, fn):
        def run():
            for pair in prepared:
                fn(pair)

        prepared = [PreparedPair(p, g) for p, g in pairs]
        for pair in prepared:
            _ = pair.pred  # the lazily built float image is counted in the "pass" row, not in a metric
        times[name] = best_of(run)

    per_metric("MAE", px.mae)
    per_metric("F", lambda p: (px.f_curve(px.ThresholdCounts(p), 0.3), px.adaptive_f(p, *px.adaptive_counts(p), 0.3)))
    per_metric("Fw", weighted_f_measure)
    per_metric("S", s_measure)
    per_metric("E", lambda p: (px.e_curve(px.ThresholdCounts(p)), px.adaptive_em(p, *px.adaptive_counts(p))))
    times["total"] = best_of(lambda: [_standard(PreparedPair(p, g)) for p, g in pairs])

    def full():
        metrics = SaliencyMetrics()
        per_image[:] = [metrics.update(p, g) for p, g in pairs]
        results.update(metrics.results())

    per_image, results = [], {}
    times["full"] = best_of(full)
    values = {key: np.array([row[key] for row in per_image]) for key in per_image[0]}
    values.update({key: results[key] for key in ("f_curve", "precision", "recall", "e_curve")})
    return times, values


_VALUES = {
    "MAE": ("mae",),
    "F": ("max_f", "mean_f", "adp_f", "f_curve", "precision", "recall"),
    "Fw": ("wfm",),
    "S": ("sm",),
    "E": ("max_em", "mean_em", "adp_em", "e_curve"),
}
_NAMES = {
    "MAE": "MAE",
    "F": "F-measure (curves + adaptive)",
    "Fw": "weighted F-measure",
    "S": "S-measure",
    "E": "E-measure (curve + adaptive)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 1000])
    parser.add_argument("--images", type=int, nargs="+", default=[30, 10], help="images per size (last one repeats)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's choice)")
    args = parser.parse_args()
    try:
        import py_sod_metrics  # noqa: F401  (the baseline)
    except ImportError:
        parser.exit(2, "this benchmark compares against PySODMetrics: pip install pysodmetrics\n")
    if args.threads is not None:
        cv2.setNumThreads(args.threads)

    print(
        f"PySODMetrics {version('pysodmetrics')} vs u2net.metrics; OpenCV {cv2.__version__} with"
        f" {cv2.getNumThreads()} thread(s); best of {args.repeats}; ms per image\n"
    )
    print("| size | metric | PySODMetrics | ours | speed-up | max abs diff |")
    print("|---|---|---:|---:|---:|---:|")
    for i, size in enumerate(args.sizes):
        n = args.images[min(i, len(args.images) - 1)]
        pairs = make_pairs(size, n, seed=size)
        ref_t, ref_v = _pysod(pairs, args.repeats)
        our_t, our_v = _ours(pairs, args.repeats)
        label = f"{size}² ×{n}"
        total_diff = 0.0
        for key, values in _VALUES.items():
            diff = max(float(np.nanmax(np.abs(our_v[v] - ref_v[v]))) for v in values)
            nan = sum(int(np.isnan(ref_v[v]).sum()) for v in values)
            note = f" ({nan} NaN in PySODMetrics)" if nan else ""
            total_diff = max(total_diff, diff)
            print(
                f"| {label} | {_NAMES[key]} | {ref_t[key] * 1e3:.2f} | {our_t[key] * 1e3:.2f} | "
                f"{ref_t[key] / our_t[key]:.1f}× | {diff:.1e}{note} |"
            )
        print(f"| {label} | shared pass (histograms, float image) | – | {our_t['pass'] * 1e3:.2f} | | |")
        ref_total = sum(ref_t[key] for key in _VALUES)
        print(
            f"| {label} | **six standard metrics, end to end** | **{ref_total * 1e3:.2f}** | "
            f"**{our_t['total'] * 1e3:.2f}** | **{ref_total / our_t['total']:.1f}×** | {total_diff:.1e} |"
        )
        print(
            f"| {label} | our full set (+ IoU/Dice curves, relaxed boundary F, Boundary IoU) | – | "
            f"{our_t['full'] * 1e3:.2f} | | |"
        )


if __name__ == "__main__":
    main()
