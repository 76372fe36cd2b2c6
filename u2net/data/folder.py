"""Image/mask folder datasets: pairing by file stem, checking before training, loading samples."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import one_line
from .distractors import paste_behind
from .io import IMAGE_EXTENSIONS, ImageReadError, list_images, oriented_size, read_image, read_mask, read_problem
from .labels import LABEL_MAP_EXTENSIONS, LabelsOption, MaskReader

MaskFn = Callable[[Path], np.ndarray]  # reads a mask file as H×W float32 in [0, 1]
DISTRACTOR_STREAM = 1  # the pasting's random stream is seeded by (sample seed, this)


@dataclass(frozen=True)
class SourceSpec:
    """One dataset on disk: ``root/images`` holds the images, ``root/masks`` the masks.

    ``weight`` (training sources only): the share of training draws that come from this source,
    relative to the other sources' weights (see :class:`~u2net.data.ResumableBatchSampler`).
    ``labels``: the masks are label maps (``"nonzero"`` or a list of foreground label indices; see
    :mod:`u2net.data.labels`), read as masks by that rule.
    """

    name: str
    root: str
    images: str = "images"
    masks: str = "masks"
    recursive: bool = False
    weight: float | None = None
    labels: LabelsOption = None

    @property
    def image_dir(self) -> Path:
        return Path(self.root).expanduser() / self.images

    @property
    def mask_dir(self) -> Path:
        return Path(self.root).expanduser() / self.masks

    @property
    def mask_reader(self) -> MaskReader:
        """Reads this source's masks (label maps by ``labels``, else as masks)."""
        return mask_reader_for([self])


def mask_reader_for(sources: Sequence[SourceSpec]) -> MaskReader:
    """One reader for the masks of all ``sources``: label maps where a source has ``labels``."""
    return MaskReader({source.mask_dir: source.labels for source in sources if source.labels is not None})


@dataclass(frozen=True)
class Problem:
    """A file that cannot be used, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class PairScan:
    """The outcome of pairing one source: usable pairs and the problems found on the way."""

    source: SourceSpec
    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


class DatasetCheckError(ValueError):
    """A dataset failed its pre-training check; the message lists every offending file."""


def index_by_stem(files: list[Path], folder: str | Path, problems: list[Problem]) -> dict[str, Path]:
    """``files`` by their path below ``folder`` without suffix; a second file with the same key is
    left out and added to ``problems`` (``a.jpg`` and ``a.png`` cannot both be paired)."""
    found: dict[str, Path] = {}
    for path in files:
        key = path.relative_to(Path(folder)).with_suffix("").as_posix()
        if key in found:
            problems.append(Problem(str(path), f"same stem as {found[key].name}; cannot tell which to pair"))
            continue
        found[key] = path
    return found


def scan_source(source: SourceSpec) -> PairScan:
    """Pair images and masks of ``source`` by stem (any of jpg/jpeg/png/bmp/webp/tif extensions).

    Images without masks and masks without images become problems; a missing folder or a source
    with no pairs at all raises ``DatasetCheckError`` at once.
    """
    scan = PairScan(source)
    for folder, what in ((source.image_dir, "image"), (source.mask_dir, "mask")):
        if not folder.is_dir():
            raise DatasetCheckError(f"dataset {source.name}: {what} folder {folder} does not exist")
    # Links to folders are followed (datasets are often put together from links), each folder once; what is
    # left out (a link loop, a broken link, a folder that cannot be listed) is named, never dropped silently.
    left_out: list[tuple[Path, str]] = []
    image_files = list_images(source.image_dir, source.recursive, left_out, follow_links=True)
    images = index_by_stem(image_files, source.image_dir, scan.problems)
    mask_types = IMAGE_EXTENSIONS if source.labels is None else LABEL_MAP_EXTENSIONS
    mask_files = list_images(source.mask_dir, source.recursive, left_out, mask_types, follow_links=True)
    masks = index_by_stem(mask_files, source.mask_dir, scan.problems)
    for path, why in left_out:
        warnings.warn(f"dataset {source.name}: left out {path}: {why}", stacklevel=2)
    for key, image in images.items():
        if key in masks:
            scan.pairs.append((image, masks[key]))
        else:
            scan.problems.append(Problem(str(image), f"no mask with this stem in {source.mask_dir}"))
    for key, mask in masks.items():
        if key not in images:
            scan.problems.append(Problem(str(mask), f"no image with this stem in {source.image_dir}"))
    if not scan.pairs:
        raise DatasetCheckError(
            f"dataset {source.name}: no image/mask pairs found in {source.image_dir} and {source.mask_dir}"
        )
    return scan


def _check_pair(pair: tuple[Path, Path], decode: bool, mask_fn: MaskFn) -> list[Problem]:
    sizes = []
    problems = []
    # A label map (any mask_fn but read_mask) is always read whole: its header does not show that it holds labels.
    for path, reader, header_says_enough in ((pair[0], read_image, True), (pair[1], mask_fn, mask_fn is read_mask)):
        try:
            if decode or not header_says_enough:
                array = reader(path)
                sizes.append((array.shape[1], array.shape[0]))
            else:
                sizes.append(oriented_size(path))
        except ImageReadError as exc:  # refused by our own rules: not an allowed format, too large, NaN
            problems.append(Problem(str(path), exc.reason))
        except Exception as exc:  # PIL raises many types for corrupt files
            problems.append(Problem(str(path), f"unreadable or corrupt ({type(exc).__name__}: {exc})"))
    if not problems and sizes[0] != sizes[1]:
        problems.append(
            Problem(str(pair[1]), f"mask is {sizes[1][0]}×{sizes[1][1]} but its image is {sizes[0][0]}×{sizes[0][1]}")
        )
    return problems


def check_pairs(
    pairs: Sequence[tuple[Path, Path]],
    mode: str = "full",
    workers: int = 4,
    progress: bool = True,
    desc: str = "",
    mask_fn: MaskFn = read_mask,
) -> list[Problem]:
    """Open every pair: ``mode="full"`` decodes both files (finds truncated/corrupt data and NaN or
    infinite values in float TIFFs), ``"header"`` reads only headers (sizes and formats), ``"none"``
    skips the check. ``mask_fn`` reads the masks (a source's :class:`MaskReader` for label maps)."""
    if mode == "none":
        return []
    if mode not in ("full", "header"):
        raise ValueError(f"check mode must be 'full', 'header' or 'none', got {mode!r}")
    from tqdm import tqdm

    decode = mode == "full"
    problems: list[Problem] = []
    # Decoding releases the GIL in PIL, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda p: _check_pair(p, decode, mask_fn), pairs)
        for found in tqdm(results, total=len(pairs), desc=f"checking {desc}".strip(), disable=not progress):
            problems.extend(found)
    return problems


def collect_source_pairs(
    sources: Sequence[SourceSpec],
    check: str = "full",
    on_invalid: str = "error",
    workers: int = 4,
    progress: bool = True,
) -> list[list[tuple[Path, Path]]]:
    """Scan and check ``sources`` and return the usable (image, mask) pairs of each, in order.

    ``on_invalid="error"`` (default) raises one :class:`DatasetCheckError` listing every offending
    file; ``"skip"`` leaves them out with a warning that gives their number.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    per_source: list[list[tuple[Path, Path]]] = []
    all_problems: list[Problem] = []
    for source in sources:
        scan = scan_source(source)
        mask_fn = read_mask if source.labels is None else source.mask_reader  # plain masks: headers suffice
        problems = scan.problems + check_pairs(scan.pairs, check, workers, progress, source.name, mask_fn)
        bad = {Path(p.path) for p in problems}
        per_source.append([pair for pair in scan.pairs if pair[0] not in bad and pair[1] not in bad])
        all_problems.extend(problems)
    if all_problems:
        listing = "\n".join(f"  {p}" for p in all_problems)
        names = ", ".join(s.name for s in sources)
        if on_invalid == "error":
            raise DatasetCheckError(
                f"dataset {names}: {len(all_problems)} problem(s) found "
                f"(set data.on_invalid=skip to train without these files):\n{listing}"
            )
        warnings.warn(f"dataset {names}: skipping {len(all_problems)} invalid file(s):\n{listing}", stacklevel=2)
    if not any(per_source):
        raise DatasetCheckError(f"dataset {', '.join(s.name for s in sources)}: no usable pairs left")
    return per_source


def collect_pairs(
    sources: Sequence[SourceSpec],
    check: str = "full",
    on_invalid: str = "error",
    workers: int = 4,
    progress: bool = True,
) -> list[tuple[Path, Path]]:
    """The usable (image, mask) pairs of all ``sources``, one after the other (see :func:`collect_source_pairs`)."""
    per_source = collect_source_pairs(sources, check, on_invalid, workers, progress)
    return [pair for pairs in per_source for pair in pairs]


SampleKey = int | tuple[int, int]
# More unreadable training pairs than this (and more than 3) stop the run: the data has a problem.
MAX_UNREADABLE_FRACTION = 0.05


class SaliencyDataset(Dataset):
    """(image, mask) pairs read from disk and passed through ``transform``.

    ``transform(image, mask, seed)`` takes H×W×3 uint8 and H×W float32 and returns the image as a
    3×h×w float tensor and the mask as 1×h×w. Indexing with ``(index, seed)`` gives that sample's
    augmentation a seed of its own, so a sample looks the same whichever worker loads it and a
    resumed run sees exactly the augmentations of an uninterrupted one.

    ``mask_fn`` reads the masks (a :class:`MaskReader` where some are label maps).

    With ``skip_unreadable`` (training), a pair that cannot be read any more (deleted, unmounted,
    damaged after the data check) is replaced by the next readable one, with a one-line warning that
    names the file; when more than :data:`MAX_UNREADABLE_FRACTION` of the pairs (at least 3) have
    failed in one process, it raises :class:`DatasetCheckError` instead. Without it, the first
    unreadable pair raises.

    ``distractors`` (training): the probability that another pair's subject is pasted behind this pair's
    (:func:`~u2net.data.distractors.paste_behind`; the mask stays this pair's), drawn from the sample's seed.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        transform: Callable,
        skip_unreadable: bool = False,
        mask_fn: MaskFn = read_mask,
        distractors: float = 0.0,
    ) -> None:
        if not 0.0 <= distractors <= 1.0:
            raise ValueError(f"distractors is a probability in [0, 1], got {distractors}")
        self.pairs = list(pairs)
        self.mask_fn = mask_fn
        self.distractors = distractors
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.unreadable: dict[int, str] = {}  # index -> why, in this process (each loader worker has its own)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: SampleKey) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        for offset in range(len(self.pairs)):
            candidate = (index + offset) % len(self.pairs)
            if candidate in self.unreadable:
                continue
            try:
                image, mask = self._read(candidate)
            except RuntimeError as exc:
                if not self.skip_unreadable:
                    raise
                self._skip(candidate, str(exc))
                continue
            if self.distractors > 0 and len(self.pairs) > 1:
                image = self._with_distractor(candidate, image, mask, seed)
            image_t, mask_t = self.transform(image, mask, seed)
            return {"image": image_t, "mask": mask_t, "index": candidate}
        raise DatasetCheckError(f"none of the {len(self.pairs)} training pairs can be read any more")

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        try:
            image = read_image(image_path)
        except Exception as exc:
            raise RuntimeError(f"{image_path}: cannot read image ({read_problem(exc)})") from exc
        try:
            mask = self.mask_fn(mask_path)
        except Exception as exc:
            raise RuntimeError(f"{mask_path}: cannot read mask ({read_problem(exc)})") from exc
        if image.shape[:2] != mask.shape:
            raise RuntimeError(f"{mask_path}: mask size {mask.shape[::-1]} differs from image {image.shape[1::-1]}")
        return image, mask

    def _with_distractor(self, index: int, image: np.ndarray, mask: np.ndarray, seed: int | None) -> np.ndarray:
        # A stream of its own (not the transform's), so the geometry draws are the same with or without pasting.
        rng = np.random.default_rng(None if seed is None else (int(seed), DISTRACTOR_STREAM))
        if rng.random() >= self.distractors:
            return image
        other = int(rng.integers(len(self.pairs) - 1))
        other += other >= index  # any pair but this one
        try:
            other_image, other_mask = self._read(other)
        except RuntimeError:
            return image  # the other pair is reported when its own turn comes
        return paste_behind(image, mask, other_image, other_mask, rng)

    def _skip(self, index: int, problem: str) -> None:
        self.unreadable[index] = problem
        limit = max(3, math.ceil(MAX_UNREADABLE_FRACTION * len(self.pairs)))
        if len(self.unreadable) > limit:
            raise DatasetCheckError(
                f"{len(self.unreadable)} of {len(self.pairs)} training pairs became unreadable during training "
                f"(more than {limit}), e.g. {next(iter(self.unreadable.values()))}; check the data and resume"
            )
        print(f"warning: skipped {one_line(problem)}; training on the next pair instead", file=sys.stderr)


T = TypeVar("T")


def split_pairs(pairs: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out ``fraction`` of ``pairs`` (at least one) for validation, chosen by ``seed``; both parts
    keep the input's order. The split depends only on ``len(pairs)`` and ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = max(1, round(len(pairs) * fraction))
    held = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(pairs) if i not in held]
    val = [p for i, p in enumerate(pairs) if i in held]
    return train, val


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch: image N×3×h×w, mask N×1×h×w, index N."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
    }


def workers_default() -> int:
    """Number of threads for checking: the cores we may use."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
