"""Parsing label maps read as masks: person datasets (CCP, LIP, ATR, CIHP) ship class indices, not masks.

A source with ``labels`` set reads its mask folder as label maps and maps labels to foreground:
``"nonzero"`` (every label but 0, the background, and :data:`~u2net.data.io.VOID_INDEX`, the unlabelled
border some sets mark with 255) or a list of label indices (only those are foreground). Label maps are
single-channel PNG/BMP/TIFF files (8- or 16-bit gray, or palette indices) or MATLAB ``.mat`` files (CCP's
``annotations/pixel-level/NNNN.mat``: the array ``groundtruth``, or the file's only 2-D integer array).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ImageOps

from .io import IMAGE_EXTENSIONS, VOID_INDEX, ImageReadError, open_image, read_mask

LABEL_MAP_EXTENSIONS = (*IMAGE_EXTENSIONS, ".mat")  # what a label-map folder may hold
MAT_KEYS = ("groundtruth", "labels", "label", "segmentation")  # tried first, in order, in a .mat file

LabelsOption = str | Sequence[int] | None  # what a config or the CLI gives: None, "nonzero" or indices


@dataclass(frozen=True)
class LabelRule:
    """Which labels of a label map are foreground: ``foreground`` indices, or ``None`` for every label
    but 0 and :data:`VOID_INDEX`."""

    foreground: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, option: LabelsOption) -> LabelRule | None:
        """``None`` (plain masks), ``"nonzero"``/``"all"`` or a list of label indices (an int or a
        comma-separated string of them works too); anything else raises ``ValueError`` in one line."""
        if option is None or isinstance(option, LabelRule):
            return option
        if isinstance(option, str):
            text = option.strip().lower()
            if text in ("nonzero", "all"):
                return cls(None)
            option = [part for part in text.replace(" ", "").split(",") if part]
        if isinstance(option, int):
            option = [option]
        try:
            indices = tuple(sorted({int(str(value)) for value in option}))
        except (TypeError, ValueError):
            raise ValueError(
                f"labels must be 'nonzero' or a list of label indices such as [1, 2, 5], got {option!r}"
            ) from None
        if not indices or min(indices) < 0:
            raise ValueError(f"labels must name at least one label index of 0 or more, got {option!r}")
        return cls(indices)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """An H×W integer label map as an H×W float32 mask in {0, 1}."""
        if self.foreground is None:
            return ((labels != 0) & (labels != VOID_INDEX)).astype(np.float32)
        return np.isin(labels, self.foreground).astype(np.float32)


def _mat_labels(path: str | os.PathLike) -> np.ndarray:
    from scipy.io import loadmat  # only label maps in .mat files need scipy

    name = os.fspath(path)
    try:
        content = loadmat(path)
    except Exception as exc:
        raise ImageReadError(name, f"not a readable MATLAB .mat file ({type(exc).__name__})") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    label_maps = {k: v for k, v in arrays.items() if v.ndim == 2 and v.dtype.kind in "iub" and min(v.shape) > 1}
    for key in MAT_KEYS:
        if key in label_maps:
            return label_maps[key]
    if len(label_maps) == 1:
        return next(iter(label_maps.values()))
    found = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()) or "no arrays"
    raise ImageReadError(name, f"no single 2-D integer label map in this .mat file (it holds {found})")


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A label map file as an H×W integer array of label indices (see the module's docstring)."""
    if Path(path).suffix.lower() == ".mat":
        return _mat_labels(path)
    with open_image(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("P", "PA"):
            return np.asarray(img.getchannel(0) if img.mode == "PA" else img)
        if img.mode in ("L", "I;16", "I;16B", "I;16L", "I", "1"):
            return np.asarray(img).astype(np.int64 if img.mode.startswith("I") else np.uint8)
        raise ImageReadError(
            os.fspath(path), f"a label map needs one channel of label indices (gray or palette), not {img.mode}"
        )


class MaskReader:
    """Reads a pair's mask: as a label map where the mask lies in a folder with a :class:`LabelRule`,
    else with :func:`~u2net.data.io.read_mask`. Picklable (loader workers get a copy)."""

    def __init__(self, rules: Mapping[str | os.PathLike, LabelsOption] | None = None) -> None:
        parsed = {Path(f).expanduser().absolute(): LabelRule.parse(option) for f, option in (rules or {}).items()}
        self.rules = {folder: rule for folder, rule in parsed.items() if rule is not None}

    def rule_for(self, path: str | os.PathLike) -> LabelRule | None:
        """The rule of the deepest folder with one that holds ``path``, or ``None`` (a plain mask)."""
        if not self.rules:
            return None
        absolute = Path(path).expanduser().absolute()
        matches = [folder for folder in self.rules if absolute.is_relative_to(folder)]
        return self.rules[max(matches, key=lambda folder: len(folder.parts))] if matches else None

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        """The mask of ``path`` as H×W float32 in [0, 1]."""
        rule = self.rule_for(path)
        return read_mask(path) if rule is None else rule.apply(read_label_map(path))
