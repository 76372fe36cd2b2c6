"""Mining (``u2net.inference.mining``, behind ``u2net mine``): ranking unlabelled photos by the model's
uncertainty and writing them out to be corrected."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from PIL import Image

from u2net.data import folder_datamodule
from u2net.inference import Predictor
from u2net.inference.mining import PARTS_WEIGHT, RANKINGS, rank_photos, uncertainty_of, write_selection


def _disc(size: int = 64, blur: float = 0.0, centre: tuple[int, int] = (32, 32), radius: int = 14) -> np.ndarray:
    mask = np.zeros((size, size), np.float32)
    cv2.circle(mask, centre, radius, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), blur) if blur else mask


def test_a_sharp_symmetric_mask_is_sure() -> None:
    sure = uncertainty_of(_disc(), _disc())
    assert sure.band == 0.0 and sure.flip == 0.0 and sure.parts == 0
    assert sure.entropy < 1e-3 and sure.combined == 0.0


def test_each_signal_rises_with_what_it_measures() -> None:
    sharp = uncertainty_of(_disc(), _disc())
    soft = uncertainty_of(_disc(blur=4), _disc(blur=4))
    assert soft.band > 0.3 and soft.entropy > sharp.entropy + 0.2 and soft.flip == 0.0
    moved = uncertainty_of(_disc(centre=(26, 32)), _disc(centre=(38, 32)))  # the mirror view disagrees
    assert moved.flip > 0.5  # (their mean is 0.5 where they disagree: unsure too)
    two = np.maximum(_disc(centre=(16, 32), radius=8), _disc(centre=(48, 32), radius=8))
    bystander = uncertainty_of(two, two)
    assert bystander.parts == 1 and bystander.combined == pytest.approx(PARTS_WEIGHT)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_path(checkpoint, device="cpu")


def test_ranking_orders_by_the_chosen_signal_and_reports_unreadable_photos(predictor, photos) -> None:
    failed: list[str] = []
    files = sorted(photos.iterdir())
    ranked = rank_photos(predictor, files, by="flip", failed=failed, progress=False)
    assert len(ranked) == 6 and len(failed) == 1 and failed[0].startswith(str(photos / "broken.png"))
    scores = [item.score for item in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(item.score == item.signals.flip for item in ranked)
    shuffled = [item.path for item in rank_photos(predictor, files[:-1], by="random", seed=1, progress=False)]
    assert shuffled == [item.path for item in rank_photos(predictor, files[:-1], by="random", seed=1, progress=False)]
    with pytest.raises(ValueError, match="unknown ranking 'loss'"):
        rank_photos(predictor, files, by="loss")
    assert set(RANKINGS) >= {"combined", "random"}


def test_the_selection_is_a_folder_pair_that_training_takes(predictor, photos, tmp_path) -> None:
    ranked = rank_photos(predictor, sorted(photos.glob("*.jpg")), progress=False)
    rows = write_selection(predictor, ranked, tmp_path / "out", top=4, progress=False)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5, 6] and sum(bool(row["image"]) for row in rows) == 4
    images, masks = sorted((tmp_path / "out" / "images").iterdir()), sorted((tmp_path / "out" / "masks").iterdir())
    assert [p.stem for p in images] == [p.stem for p in masks] == sorted(item.path.stem for item in ranked[:4])
    mask = np.asarray(Image.open(masks[0]))
    assert mask.dtype == np.uint8 and mask.shape == (72, 96)  # the photo's own size, editable as 8-bit gray
    with open(tmp_path / "out" / "ranking.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["source"] for row in table] == [str(item.path) for item in ranked]
    data = folder_datamodule(str(tmp_path / "out" / "images"), str(tmp_path / "out" / "masks"), progress=False)
    data.val_fraction = 0.25
    data.setup(seed=0)
    assert len(data.train_set) + len(data.val_set) == 4


def test_nothing_is_overwritten(predictor, photos, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "p0.png").write_bytes(b"my corrected mask")
    ranked = rank_photos(predictor, sorted(photos.glob("*.jpg")), progress=False)
    with pytest.raises(FileExistsError, match=r"p0\.png: already exists"):
        write_selection(predictor, ranked, out, top=6, progress=False)
    assert (out / "masks" / "p0.png").read_bytes() == b"my corrected mask"
    assert not (out / "images").exists() and not (out / "ranking.csv").exists()
