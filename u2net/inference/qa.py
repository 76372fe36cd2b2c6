"""A confidence score and QA flags for one cut-out's mask, so that a batch can be triaged without
looking at every output: which masks are probably wrong, and why.

Flags (names as written in CSVs and headers):

- ``empty``: nothing is foreground (no pixel reaches alpha 128, or less than 0.1 % of the photo);
- ``touches_frame``: the subject runs into the photo's border (over 5 % of the border's pixels are
  foreground): probably cut off, or the background was taken for the subject;
- ``several_components``: more than one sizeable region (each at least 5 % of the largest);
- ``uncertain_band``: the band of uncertain alpha (between 10 % and 90 %) is wide for the subject's size
  (over 25 % of the foreground's area): soft or unsure edges.

``confidence`` (0–1) is one minus the uncertain share: the pixels with alpha between 10 % and 90 %, as
a fraction of the foreground plus those pixels; an empty mask has confidence 0.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.imageops import component_areas
from ..data.io import open_image
from ..errors import reason
from ..fileio import atomic_write, csv_cell
from .options import RemovalOptions

__all__ = ["QA_COLUMNS", "QA_FLAGS", "MaskQuality", "assess_mask", "read_qa_csv", "save_qa_table", "write_qa_csv"]

QA_FLAGS = ("empty", "touches_frame", "several_components", "uncertain_band")
MIN_FOREGROUND = 0.001  # of the photo
BORDER_SHARE = 0.05  # of the border's pixels
COMPONENT_SHARE = 0.05  # of the largest component
UNCERTAIN_SHARE = 0.25  # of the foreground


@dataclass(frozen=True)
class MaskQuality:
    """The assessment of one mask: ``confidence`` in [0, 1] and the :data:`QA_FLAGS` raised."""

    confidence: float
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.flags

    def header_value(self) -> str:
        """The flags as an HTTP header / CSV cell: comma-separated, ``ok`` when there are none."""
        return ",".join(self.flags) or "ok"


def assess_mask(alpha: np.ndarray) -> MaskQuality:
    """Assess an H×W uint8 alpha mask (see the module docstring for what each flag means)."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"assess_mask needs an H×W uint8 mask, got {alpha.dtype} of shape {alpha.shape}")
    foreground = alpha >= 128
    area = int(foreground.sum())
    if area == 0 or area < MIN_FOREGROUND * alpha.size:
        return MaskQuality(0.0, ("empty",))
    uncertain = int(((alpha > 25) & (alpha < 230)).sum())
    confidence = 1.0 - uncertain / (area + uncertain)
    flags = []
    border = np.concatenate([foreground[0], foreground[-1], foreground[1:-1, 0], foreground[1:-1, -1]])
    if border.mean() > BORDER_SHARE:
        flags.append("touches_frame")
    sizes = component_areas(foreground)
    if (sizes >= COMPONENT_SHARE * sizes.max()).sum() > 1:
        flags.append("several_components")
    if uncertain > UNCERTAIN_SHARE * area:
        flags.append("uncertain_band")
    return MaskQuality(round(confidence, 4), tuple(flags))


# -- the QA table of a batch (u2net remove --qa-csv) -------------------------------------
QA_COLUMNS = ("input", "output", "confidence", "flags")
NOT_ASSESSED = "not_assessed"  # the flags of an output on disk whose mask cannot be read back (a composite)

QARow = tuple[tuple[str, str], MaskQuality | None]  # ((input, output), quality; None: not assessed)


def _csv_value(cell: str) -> str:
    """A name cell as written before :func:`~u2net.fileio.csv_cell` escaped it."""
    return cell[1:] if cell.startswith("'") else cell


def write_qa_csv(
    path: str | os.PathLike, rows: list[tuple[tuple[str | os.PathLike, str | os.PathLike], MaskQuality | None]]
) -> None:
    """The QA table of a batch (input, output, confidence, flags), written atomically.

    Names that are not UTF-8 keep their bytes (surrogate escapes, as ``os.fsdecode`` gives them); cells a
    spreadsheet would run as a formula (``= + - @``) get a leading quote; a quality of ``None`` (a mask that
    could not be read back) is an empty confidence with the flag ``not_assessed``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(QA_COLUMNS)
    for (source, output), quality in rows:
        if quality is None:
            confidence, flags = "", NOT_ASSESSED
        else:
            confidence, flags = f"{quality.confidence:.4f}", quality.header_value()
        writer.writerow([csv_cell(os.fspath(source)), csv_cell(os.fspath(output)), confidence, flags])
    with atomic_write(Path(path)) as f:
        f.write(text.getvalue().encode("utf-8", "surrogateescape"))


def read_qa_csv(path: str | os.PathLike) -> list[QARow]:
    """The rows of a table :func:`write_qa_csv` wrote (none when there is no file), for a later run to keep.

    A file that is not such a table (another CSV, a folder, a pipe) raises ``ValueError`` with one line naming
    it: it is the user's, and must not be replaced."""
    path = Path(path)
    if not os.path.exists(path):  # unlike Path.exists, never raises (an unsearchable parent)
        return []
    if not os.path.isfile(path):
        raise ValueError(f"{path}: is a folder or a special file, not a QA table; give a file name")
    not_a_table = f"{path}: exists and is not a QA table of u2net remove ({','.join(QA_COLUMNS)}); give another file"
    rows: list[QARow] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:  # an empty file holds nothing to keep
                return []
            if tuple(header) != QA_COLUMNS:
                raise ValueError(not_a_table)
            for cells in reader:
                if len(cells) != len(QA_COLUMNS):
                    raise ValueError(not_a_table)
                source, output, confidence, flags = cells
                try:
                    quality = MaskQuality(float(confidence), () if flags == "ok" else tuple(flags.split(",")))
                except ValueError:  # empty: not assessed
                    quality = None
                rows.append(((_csv_value(source), _csv_value(output)), quality))
    except csv.Error:  # e.g. a binary file: one huge "field"
        raise ValueError(not_a_table) from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the QA table ({exc.strerror or type(exc).__name__})") from None
    return rows


def _assess_output(path: Path, options: RemovalOptions) -> MaskQuality | None:
    """:func:`assess_mask` of an output already on disk: a mask output itself, a cut-out's alpha channel;
    ``None`` for a composite on a background (its alpha is not the mask) or a file that cannot be read."""
    if not options.mask_only and (options.bg_color is not None or options.bg_image is not None):
        return None
    try:
        with open_image(path) as img:
            if options.mask_only:
                alpha = np.asarray(img.convert("L"))
            elif "A" in img.getbands() or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA").getchannel("A"))
            else:
                return None
    except Exception:  # noqa: BLE001 - an unreadable output is "not assessed", never a failed run
        return None
    return assess_mask(alpha)


def save_qa_table(
    path: str | os.PathLike,
    pairs: list[tuple[Path, Path]],
    qualities: dict[tuple[Path, Path], MaskQuality],
    options: RemovalOptions,
    previous: list[QARow] | None = None,
    assess_existing: bool = True,
) -> tuple[int, str | None]:
    """Write the QA table of a run's ``pairs``: one row per output there is, in input order.

    A row is this run's assessment (``qualities``); else, for an output already there (skipped as done,
    or left by an earlier run), the row ``previous`` (default: the table at ``path``) has for the same
    input and output, else (``assess_existing``) :func:`assess_mask` of the file's alpha (of a cropped
    cut-out: the crop's). Earlier rows about other outputs follow, as they were. Returns (how many of this
    run's rows are flagged, why the table could not be written: one line naming it, or ``None``); a write
    error is that line, not an exception."""
    if previous is None:
        previous = read_qa_csv(path)
    earlier = dict(previous)
    planned = {os.fspath(output) for _, output in pairs}
    rows: list[QARow] = []
    for pair in pairs:
        key = (os.fspath(pair[0]), os.fspath(pair[1]))
        if pair in qualities:
            rows.append((key, qualities[pair]))
        elif key[1] != "-" and pair[1].exists():
            if key in earlier:
                rows.append((key, earlier[key]))
            elif assess_existing:
                rows.append((key, _assess_output(pair[1], options)))
    flagged = sum(quality is not None and not quality.ok for _, quality in rows)
    others = [row for row in previous if row[0][1] not in planned]
    try:
        write_qa_csv(path, rows + others)
    except OSError as exc:
        return flagged, f"{path}: the QA table was not written ({exc.strerror or reason(exc)})"
    return flagged, None
