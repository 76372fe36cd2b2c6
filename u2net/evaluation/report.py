"""Reports of an evaluation: JSON/CSV/Markdown tables, a per-image CSV, plots and a worst-case gallery."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..fileio import atomic_write, csv_cell, write_image, write_text
from ..metrics import RESULT_KEYS
from ..metrics.matting import MATTING_KEYS
from .runner import DatasetResult

# The keys of results.json, in the order of the tables: the metrics' scalars less the curve means of IoU and
# Dice (the per-image means, iou and dice, are the ones the field reports).
REPORT_KEYS = tuple(key for key in RESULT_KEYS if key not in ("mean_iou", "mean_dice"))
# Columns of the console table, as in the U²-Net paper's comparison plus the newer measures.
TABLE_COLUMNS = (
    ("max_f", "maxFβ↑"), ("mae", "MAE↓"), ("wfm", "Fwβ↑"), ("sm", "Sα↑"), ("max_em", "Emξ↑"),
    ("relax_bf", "relaxFβb↑"), ("iou", "IoU↑"), ("biou", "BIoU↑"),
)  # fmt: skip
# Against soft ground truth (alpha mattes), the matting errors follow: in the trimap's unknown band, then whole.
MATTING_COLUMNS = tuple(
    (f"{key}{suffix}", f"{key.upper() if key in ('sad', 'mse') else key.title()}{label}↓")
    for suffix, label in (("_band", " band"), ("", ""))
    for key in MATTING_KEYS
)


def report_keys(results: Sequence[DatasetResult]) -> tuple[str, ...]:
    """The keys of the tables: :data:`REPORT_KEYS`, then the matting errors any of ``results`` has."""
    extra = tuple(key for key, _ in MATTING_COLUMNS if any(key in r.summary for r in results))
    return REPORT_KEYS + extra


def table_columns(results: Sequence[DatasetResult]) -> tuple[tuple[str, str], ...]:
    """(key, label) of the printed tables' metric columns: :data:`TABLE_COLUMNS`, then the matting errors."""
    return TABLE_COLUMNS + tuple(column for column in MATTING_COLUMNS if any(column[0] in r.summary for r in results))


def shown(text: str) -> str:
    """``text`` as valid Unicode: the bytes of a file name that is not UTF-8 (which ``os.fsdecode`` keeps as lone
    surrogates) as ``\xff``, so a Markdown table, a plot or the gallery can hold it."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Write a CSV report atomically, every cell through :func:`csv_cell`. File names are written as they are on
    disk, the bytes of a name that is not UTF-8 too, so a report never fails on one (nor mangles it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows([csv_cell(cell) for cell in row] for row in rows)
    text = buffer.getvalue()
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name holds (from a hand-written name): shown escaped
        data = text.encode("utf-8", "backslashreplace")
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def summary_row(result: DatasetResult) -> dict:
    """The results.json object of one dataset (scalars only, in :func:`report_keys` order)."""
    row = {}
    for key in report_keys([result]):
        value = result.summary.get(key)
        row[key] = int(value) if key == "n_images" else (None if value is None else float(value))
    return row


def write_tables(results: Sequence[DatasetResult], out_dir: str | Path, model: dict | None = None) -> dict:
    """results.json, results.csv and results.md in ``out_dir``; returns the JSON object."""
    out_dir = Path(out_dir)
    table = {r.name: summary_row(r) for r in results}
    write_text(out_dir / "results.json", json.dumps(table, indent=2) + "\n")  # ASCII: surrogates as \udcff
    keys = report_keys(results)
    rows = [[name, *(_plain(row.get(k)) for k in keys)] for name, row in table.items()]
    write_csv(out_dir / "results.csv", ["dataset", *keys], rows)
    markdown = markdown_table(results)
    if model:
        markdown = "\n".join(f"- **{k}**: {v}" for k, v in model.items()) + "\n\n" + markdown
    write_text(out_dir / "results.md", shown(markdown))
    return table


def _plain(value) -> str:
    return "" if value is None else (str(value) if isinstance(value, int) else f"{value:.6f}")


def markdown_table(results: Sequence[DatasetResult]) -> str:
    """Datasets × metrics, as in the paper (and the matting errors, against soft ground truth)."""
    columns = table_columns(results)
    header = "| dataset | images | " + " | ".join(label for _, label in columns) + " |"
    lines = [header, "|---|---:|" + "---:|" * len(columns)]
    for r in results:
        cells = [_fmt(r.summary.get(key)) for key, _ in columns]
        lines.append(f"| {r.name} | {r.summary['n_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def console_table(results: Sequence[DatasetResult]) -> str:
    """A fixed-width text table for the terminal."""
    columns = table_columns(results)
    labels = ["dataset", "images", *(label for _, label in columns)]
    rows = [[r.name, str(r.summary["n_images"]), *(_fmt(r.summary.get(key)) for key, _ in columns)] for r in results]
    widths = [max(len(labels[i]), *(len(row[i]) for row in rows)) for i in range(len(labels))]
    line = "  ".join(label.rjust(w) if i else label.ljust(w) for i, (label, w) in enumerate(zip(labels, widths)))
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    return "\n".join([line, "-" * len(line), *body])


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def write_per_image(results: Sequence[DatasetResult], path: str | Path) -> Path:
    """One row per image and dataset, sorted worst MAE first, to find failure cases."""
    rows = sorted((row for r in results for row in r.per_image), key=lambda row: -row["mae"])
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(k, "")) for k in keys] for row in rows]
    return write_csv(path, keys, cells)


def _cell(value: object) -> object:
    return f"{value:.6f}" if isinstance(value, float) else value


def write_plots(curves: Sequence[tuple[str, dict]], out_dir: str | Path) -> list[Path]:
    """PR curves and F-measure against threshold, one line per (label, summary); PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    thresholds = np.arange(255, -1, -1)  # curve entry i is threshold 255 - i (PySODMetrics' order)
    for file_name, draw in (
        ("pr_curve.png", lambda ax, s: ax.plot(s["recall"], s["precision"])),
        ("f_threshold.png", lambda ax, s: ax.plot(thresholds, s["f_curve"])),
    ):
        fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
        for label, summary in curves:
            draw(ax, summary)[0].set_label(shown(label))
        if file_name == "pr_curve.png":
            ax.set(xlabel="recall", ylabel="precision", title="Precision–recall", xlim=(0, 1), ylim=(0, 1.02))
        else:
            ax.set(xlabel="threshold", ylabel="F-measure (β²=0.3)", title="F-measure vs threshold", xlim=(0, 255))
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        with atomic_write(out_dir / file_name) as f:
            fig.savefig(f, format="png")
        plt.close(fig)
        written.append(out_dir / file_name)
    return written


def write_gallery(
    results: Sequence[DatasetResult], path: str | Path, count: int = 12, height: int = 128
) -> Path | None:
    """The ``count`` worst images by MAE over all datasets: image | ground truth | prediction per row."""
    worst = sorted(((r.name, w) for r in results for w in r.worst), key=lambda item: -item[1]["mae"])[:count]
    if not worst:
        return None
    rows = []
    for dataset, item in worst:
        gt, pred = item["gt"], item["pred"]
        tiles = [] if item["image"] is None else [_thumb(item["image"], height)]
        tiles += [_thumb(np.repeat(gt[..., None], 3, 2), height), _thumb(np.repeat(pred[..., None], 3, 2), height)]
        row = np.concatenate([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles], axis=1)
        label = shown(f"{dataset}/{item['name']}  MAE {item['mae']:.3f}")
        banner = np.full((20, row.shape[1], 3), 255, np.uint8)
        cv2.putText(banner, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([banner, row], axis=0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return write_image(path, np.concatenate(rows, axis=0))


def _thumb(image: np.ndarray, height: int) -> np.ndarray:
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
