"""Which unlabelled photos are worth labelling: rank a folder by how unsure the model is of each photo,
and write the top ones with the model's masks, ready to be corrected and trained on (``u2net mine``).

Each photo is run twice, as it is and mirrored (the mirror image's map flipped back), at the model's
input size. From the two probability maps (``p``, ``q``) and their mean ``m``:

- ``band``: the share of uncertain pixels (``0.1 < m < 0.9``) in the foreground plus those pixels: the
  complement of the QA confidence (:mod:`u2net.inference.qa`), a wide unsure edge or a half-found part;
- ``flip``: how much the two views disagree, ``sum |p - q| / sum max(p, q)``: a relative change of the
  mask under a mirror that should change nothing;
- ``entropy``: the mean binary entropy of ``m`` over the foreground plus its uncertain band, in bits;
- ``parts``: 1 where the mask has several sizeable regions (bystanders kept, a subject cut in two);
- ``score`` (what ``by="combined"`` ranks by): ``band + flip + 0.25 · parts``.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.imageops import component_areas
from ..data.io import list_images, read_image, read_problem
from ..errors import one_line
from ..fileio import atomic_write, write_image
from .options import UNSURE_BAND
from .predictor import Predictor
from .qa import COMPONENT_SHARE
from .refine import resize_probability

RANKINGS = ("combined", "band", "flip", "entropy", "random")
PARTS_WEIGHT = 0.25  # what several sizeable regions add to the combined score
_EPS = 1e-6


@dataclass(frozen=True)
class PhotoUncertainty:
    """How unsure the model is of one photo (see the module docstring); higher is less sure."""

    band: float
    flip: float
    entropy: float
    parts: int

    @property
    def combined(self) -> float:
        return self.band + self.flip + PARTS_WEIGHT * self.parts


def _several_parts(mask: np.ndarray) -> int:
    sizes = component_areas(mask)
    return int(len(sizes) > 1 and (sizes >= COMPONENT_SHARE * sizes.max()).sum() > 1)


def uncertainty_of(plain: np.ndarray, mirrored: np.ndarray) -> PhotoUncertainty:
    """The signals of two S×S probability maps of one photo: as it is, and mirrored then flipped back."""
    mean = (plain + mirrored) / 2
    low, high = UNSURE_BAND
    unsure = (mean > low) & (mean < high)
    sure_foreground = mean >= high
    region = unsure | sure_foreground
    area = max(int(region.sum()), 1)
    clipped = np.clip(mean[region], _EPS, 1 - _EPS)
    entropy = float(-(clipped * np.log2(clipped) + (1 - clipped) * np.log2(1 - clipped)).sum() / area)
    flip = float(np.abs(plain - mirrored).sum() / max(float(np.maximum(plain, mirrored).sum()), 1.0))
    return PhotoUncertainty(float(unsure.sum() / area), flip, entropy, _several_parts(mean >= 0.5))


def photo_uncertainty(predictor: Predictor, image: np.ndarray) -> tuple[PhotoUncertainty, np.ndarray]:
    """Run ``image`` (H×W×3 uint8) as it is and mirrored; returns its signals and the mean of the two
    probability maps at the model's input size (S×S float32)."""
    x = predictor.preprocess(image)
    plain, mirrored = predictor.predict_batch(np.stack([x, np.ascontiguousarray(x[:, :, ::-1])]))
    mirrored = np.ascontiguousarray(mirrored[:, ::-1])
    return uncertainty_of(plain, mirrored), (plain + mirrored) / 2


@dataclass(frozen=True)
class MinedPhoto:
    """One ranked photo: its path, the signals, and the value it was ranked by."""

    path: Path
    signals: PhotoUncertainty
    score: float


def rank_photos(
    predictor: Predictor,
    photos: Sequence[Path],
    by: str = "combined",
    seed: int = 0,
    failed: list[str] | None = None,
    progress: bool = True,
) -> list[MinedPhoto]:
    """Score ``photos`` and sort them, least sure first (``by`` one of :data:`RANKINGS`; ``random`` is
    the baseline a ranking must beat, drawn by ``seed``). Unreadable photos go to ``failed`` as one line
    each and are left out. Only the signals are kept: memory does not grow with the photos' size."""
    from tqdm import tqdm

    if by not in RANKINGS:
        raise ValueError(f"unknown ranking {by!r}; choose one of {', '.join(RANKINGS)}")
    draws = np.random.default_rng(seed).random(len(photos))
    ranked = []
    for path, draw in tqdm(list(zip(photos, draws)), desc="ranking", unit="photo", disable=not progress):
        try:
            image = read_image(path)
        except Exception as exc:
            if failed is not None:
                failed.append(f"{path}: {read_problem(exc)}")
            continue
        signals, _ = photo_uncertainty(predictor, image)
        score = float(draw) if by == "random" else getattr(signals, by)
        ranked.append(MinedPhoto(Path(path), signals, score))
    ranked.sort(key=lambda item: -item.score)
    return ranked


CSV_FIELDS = ("rank", "image", "mask", "score", "band", "flip", "entropy", "parts", "source")


def _targets(chosen: Sequence[MinedPhoto], out_dir: Path) -> list[tuple[Path, Path]]:
    """Where each chosen photo and its mask go; refuses a clash before anything is written."""
    stems = [item.path.stem for item in chosen]
    duplicate = next((stem for stem in stems if stems.count(stem) > 1), None)
    if duplicate is not None:
        raise ValueError(f"two photos named {duplicate!r} (other extensions or folders): their masks would clash")
    targets = [(out_dir / "images" / item.path.name, out_dir / "masks" / f"{item.path.stem}.png") for item in chosen]
    taken = [path for pair in targets for path in pair if path.exists()]
    taken += [path for path in (out_dir / "ranking.csv",) if path.exists()]
    if taken:
        raise FileExistsError(f"{taken[0]}: already exists; choose an empty output folder (nothing was written)")
    return targets


def write_selection(
    predictor: Predictor, ranked: Sequence[MinedPhoto], out_dir: Path, top: int, progress: bool = True
) -> list[dict]:
    """Copy the ``top`` photos to ``out_dir/images`` and write the model's masks to ``out_dir/masks`` (8-bit
    PNG, the mean of the two views, same stem: the folder pair ``train.py data=folder`` takes once
    corrected), and every ranked photo to ``out_dir/ranking.csv`` (selected ones first, with the files they
    were written to). Existing files are never overwritten: a name that is taken raises
    ``FileExistsError`` before anything is written."""
    from tqdm import tqdm

    chosen = list(ranked[:top])
    targets = _targets(chosen, out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for item, (image_path, mask_path) in tqdm(
        list(zip(chosen, targets)), desc="writing", unit="photo", disable=not progress
    ):
        image = read_image(item.path)
        mask = resize_probability(photo_uncertainty(predictor, image)[1], image.shape[:2])
        shutil.copy2(item.path, image_path)
        write_image(mask_path, np.round(mask * 255).astype(np.uint8))
    rows = []
    for rank, item in enumerate(ranked, start=1):
        image_path, mask_path = targets[rank - 1] if rank <= len(chosen) else ("", "")
        signals = {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(item.signals).items()}
        rows.append(
            {"rank": rank, "image": str(image_path), "mask": str(mask_path), "score": round(item.score, 6)}
            | signals
            | {"source": str(item.path)}
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out_dir / "ranking.csv") as f:  # file names as they are on disk, undecodable bytes too
        f.write(text.getvalue().encode("utf-8", "surrogateescape"))
    return rows


def mine_folder(
    predictor: Predictor,
    photos_dir: Path,
    out_dir: Path,
    top: int,
    by: str = "combined",
    seed: int = 0,
    recursive: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> list[dict]:
    """Rank the photos of ``photos_dir`` and write the ``top`` least sure (see :func:`write_selection`);
    unreadable photos are reported through ``say``, one line each, and left out. Returns the CSV rows."""
    photos = list_images(photos_dir, recursive=recursive)
    if not photos:
        raise FileNotFoundError(f"{photos_dir}: no photos (jpg, png, bmp, webp, tif, gif) in this folder")
    failed: list[str] = []
    ranked = rank_photos(predictor, photos, by, seed, failed, progress)
    for line in failed:
        say(f"skipped {one_line(line)}")
    if not ranked:
        raise ValueError(f"{photos_dir}: none of the {len(photos)} photos could be read")
    return write_selection(predictor, ranked, out_dir, top, progress)
