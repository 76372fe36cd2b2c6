"""Hard negatives: another training subject pasted behind the sample's (data.distractors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from u2net.data import SaliencyDataset, train_transform
from u2net.data.distractors import paste_behind

from .test_finetune_data import _compose, _folder_data, _folders


def _photo(seed: int, box: tuple[int, int, int, int], size: tuple[int, int] = (90, 60)) -> tuple:
    """A flat photo of one colour with a subject of another in ``box`` (top, bottom, left, right)."""
    rng = np.random.default_rng(seed)
    image = np.empty((*size, 3), np.uint8)
    image[:] = rng.integers(0, 100, 3)
    mask = np.zeros(size, np.float32)
    top, bottom, left, right = box
    image[top:bottom, left:right] = rng.integers(150, 256, 3)
    mask[top:bottom, left:right] = 1.0
    return image, mask


def test_paste_goes_behind_the_subject_and_keeps_its_pixels() -> None:
    image, mask = _photo(0, (20, 80, 20, 40))
    other, other_mask = _photo(1, (10, 85, 15, 45))
    changed_somewhere = False
    for seed in range(20):
        out = paste_behind(image, mask, other, other_mask, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[mask == 1], image[mask == 1])  # the subject stays in front
        changed = np.any(out != image, axis=-1)
        # what changed is the other subject's colour (its background never comes along), up to resampled edges
        other_colour = other[50, 30].astype(int)
        if changed.any():
            close = np.abs(out[changed].astype(int) - other_colour).max(axis=-1) <= 2
            assert close.mean() > 0.5
            changed_somewhere = True
    assert changed_somewhere


def test_paste_of_an_empty_subject_changes_nothing() -> None:
    image, mask = _photo(0, (20, 80, 20, 40))
    other, _ = _photo(1, (10, 85, 15, 45))
    out = paste_behind(image, mask, other, np.zeros(other.shape[:2], np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)


def _pairs(tmp_path, count: int = 4) -> list:
    pairs = []
    for i in range(count):
        image, mask = _photo(i, (10 + i, 70, 10 + 3 * i, 40))
        image_path, mask_path = tmp_path / f"{i}.png", tmp_path / f"{i}_mask.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path)
        pairs.append((image_path, mask_path))
    return pairs


def test_dataset_pastes_by_the_sample_seed_and_leaves_the_mask(tmp_path) -> None:
    pairs = _pairs(tmp_path)
    transform = train_transform(64, 48, hflip=0.5)
    plain = SaliencyDataset(pairs, transform, True)
    pasted = SaliencyDataset(pairs, transform, True, distractors=1.0)
    differs = 0
    for seed in range(6):
        base, hard = plain[(1, seed)], pasted[(1, seed)]
        assert torch.equal(hard["mask"], base["mask"])  # same geometry, the target is this sample's own
        assert torch.equal(pasted[(1, seed)]["image"], hard["image"])  # a resumed run sees the same pastes
        differs += not torch.equal(hard["image"], base["image"])
    assert differs >= 4  # a paste can fall out of the crop; most do not
    never = SaliencyDataset(pairs, transform, True, distractors=0.0)
    assert torch.equal(never[(1, 3)]["image"], plain[(1, 3)]["image"])
    with pytest.raises(ValueError, match="distractors is a probability in"):
        SaliencyDataset(pairs, transform, True, distractors=1.5)


def test_distractors_from_the_data_config(tmp_path) -> None:
    assert _compose().data.distractors == 0.0  # off unless a recipe asks
    images, masks = _folders(tmp_path / "mine", 6)
    data = _folder_data(images, masks, "data.distractors=0.5")
    data.setup(seed=0)
    assert data.train_set.distractors == 0.5 and data.val_set.distractors == 0.0  # validation sees photos as they are
