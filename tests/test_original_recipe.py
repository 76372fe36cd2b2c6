"""Checks of benchmarks/original_recipe.py, the original U-2-Net training recipe used as a benchmark baseline."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "original_recipe.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("original_recipe", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


orig = _load_module()

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[list[str], list[str]]:
    """6 JPEG images 100×130 (one grayscale) with PNG masks (one saved as RGB)."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(6):
        if i == 1:
            img = Image.fromarray(rng.integers(0, 256, (100, 130), dtype=np.uint8), mode="L")
        else:
            img = Image.fromarray(rng.integers(0, 256, (100, 130, 3), dtype=np.uint8), mode="RGB")
        mask = np.zeros((100, 130), dtype=np.uint8)
        mask[20 + i : 70, 30 : 90 + i] = 255
        mask_img = Image.fromarray(mask, mode="L")
        if i == 2:
            mask_img = mask_img.convert("RGB")
        img_path, mask_path = tmp_path / f"im{i}.jpg", tmp_path / f"im{i}.png"
        img.save(img_path, quality=95)
        mask_img.save(mask_path)
        images.append(str(img_path))
        masks.append(str(mask_path))
    return images, masks


def test_dataset_shapes(pairs):
    images, masks = pairs
    raw = orig.SalObjDataset(images, masks)
    for i in range(len(images)):
        s = raw[i]
        assert s["image"].shape[:2] == (100, 130) and s["image"].ndim == 3
        assert s["label"].shape == (100, 130, 1)
        assert s["imidx"].tolist() == [i]
    assert raw[1]["image"].shape == (100, 130, 1)  # grayscale gets a channel axis

    ds = orig.SalObjDataset(images, masks, transform=orig.original_transform())
    for i in range(len(images)):
        s = ds[i]
        img, lbl = s["image"], s["label"]
        assert img.shape == (3, 288, 288) and img.dtype == torch.float64
        assert lbl.shape == (1, 288, 288)
        assert float(lbl.min()) >= 0.0 and float(lbl.max()) == pytest.approx(1.0)
        # Normalised: inverse of (x - mean) / std lies in [0, 1].
        mean, std = (MEAN[[0, 0, 0]], STD[[0, 0, 0]]) if i == 1 else (MEAN, STD)  # grayscale: red stats
        x = img.numpy() * std[:, None, None] + mean[:, None, None]
        assert x.min() >= -1e-9 and x.max() <= 1 + 1e-9
    gray = ds[1]["image"].numpy()
    assert np.allclose(gray[0], gray[1]) and np.allclose(gray[1], gray[2])  # channel 0 replicated, red stats


def test_to_tensor_lab_values():
    image = np.random.default_rng(1).random((4, 5, 3)) * 0.5
    label = np.full((4, 5, 1), 0.25)
    out = orig.ToTensorLab(flag=0)({"imidx": np.array([0]), "image": image, "label": label})
    expected = (image / image.max() - MEAN) / STD
    assert np.allclose(out["image"].numpy(), expected.transpose(2, 0, 1))
    assert np.allclose(out["label"].numpy(), 1.0)
    empty = orig.ToTensorLab()({"imidx": np.array([0]), "image": image, "label": np.zeros((4, 5, 1))})
    assert float(empty["label"].max()) == 0.0


def test_random_crop_flips_along_axis0(monkeypatch):
    image = np.arange(320 * 320 * 3, dtype=np.float64).reshape(320, 320, 3)
    label = np.arange(320 * 320, dtype=np.float64).reshape(320, 320, 1)
    sample = {"imidx": np.array([0]), "image": image, "label": label}
    crop = orig.RandomCrop(288)
    monkeypatch.setattr(np.random, "randint", lambda low, high: 0)

    monkeypatch.setattr(random, "random", lambda: 0.9)  # >= 0.5: flip
    out = crop(sample)
    assert np.array_equal(out["image"], image[::-1][:288, :288])
    assert np.array_equal(out["label"], label[::-1][:288, :288])
    assert out["image"][0, 0, 0] == image[319, 0, 0]  # upside down, not mirrored

    monkeypatch.setattr(random, "random", lambda: 0.1)  # < 0.5: no flip
    out = crop(sample)
    assert np.array_equal(out["image"], image[:288, :288])


def test_random_crop_offsets_in_range():
    np.random.seed(0)
    random.seed(0)
    image = np.arange(320 * 320, dtype=np.float64).reshape(320, 320, 1)
    crop = orig.RandomCrop(288)
    for _ in range(20):
        out = crop({"imidx": np.array([0]), "image": image, "label": image})
        assert out["image"].shape == (288, 288, 1)


def test_measure_original_throughput(pairs):
    images, masks = pairs
    result = orig.measure_original_throughput("u2netp", images, masks, batch_size=2, steps=1, warmup=0)
    assert set(result) == {"images_per_s", "step_s", "data_wait_s"}
    assert result["images_per_s"] > 0
    assert result["step_s"] > 0
    assert 0 <= result["data_wait_s"] <= result["step_s"]
