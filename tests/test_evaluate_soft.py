"""evaluate.py against soft ground truth (alpha mattes): matting errors beside the binary metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from u2net.evaluation import REPORT_KEYS, score_folders, score_model
from u2net.evaluation.runner import SoftTruth
from u2net.inference import Predictor
from u2net.metrics.matting import matting_errors

from .conftest import save_tiny_checkpoint
from .helpers_evaluation import _evaluate, soft_disc, trimap_of

MATTING = ("sad", "mse", "grad", "conn")


def _soft_set(root, count: int = 3) -> None:
    """gt/ soft alpha discs, trimaps/, pred/ hard cuts of them, images/ photos of them."""
    for sub in ("gt", "trimaps", "pred", "images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        alpha = soft_disc(size=48, radius=12 + 2 * i)
        u8 = np.round(alpha * 255).astype(np.uint8)
        Image.fromarray(u8).save(root / "gt" / f"a{i}.png")
        Image.fromarray(trimap_of(alpha)).save(root / "trimaps" / f"a{i}.png")
        Image.fromarray(np.where(alpha >= 0.5, 255, 0).astype(np.uint8)).save(root / "pred" / f"a{i}.png")
        photo = np.stack([u8, 255 - u8, np.full_like(u8, 90)], axis=-1)
        Image.fromarray(photo).save(root / "images" / f"a{i}.jpg")


def test_folder_mode_scores_matting_errors_whole_and_in_the_band(tmp_path):
    _soft_set(tmp_path)
    soft = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False, soft=SoftTruth(tmp_path / "trimaps"))
    expected = []
    for i in range(3):
        gt = np.asarray(Image.open(tmp_path / "gt" / f"a{i}.png")).astype(np.float64) / 255
        pred = np.asarray(Image.open(tmp_path / "pred" / f"a{i}.png")).astype(np.float64) / 255
        expected.append(matting_errors(pred, gt, np.asarray(Image.open(tmp_path / "trimaps" / f"a{i}.png"))))
    for key in (*MATTING, *(f"{k}_band" for k in MATTING)):
        assert soft.summary[key] == pytest.approx(np.mean([row[key] for row in expected]), rel=1e-9), key
        assert soft.summary[key] > 0
        assert all(key in row for row in soft.per_image)
    # The binary metrics are still there, the same as without soft scoring.
    plain = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert soft.summary["mae"] == pytest.approx(plain.summary["mae"])
    assert "sad" not in plain.summary and "sad" not in plain.per_image[0]


def test_without_trimaps_only_the_whole_image_errors(tmp_path):
    _soft_set(tmp_path, count=2)
    result = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False, soft=SoftTruth())
    assert all(key in result.summary for key in MATTING)
    assert not any(f"{key}_band" in result.summary for key in MATTING)


def test_a_trimap_of_another_size_fails_that_image_only(tmp_path):
    _soft_set(tmp_path, count=2)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "trimaps" / "a1.png")
    result = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False, soft=SoftTruth(tmp_path / "trimaps"))
    assert result.summary["n_images"] == 1
    assert any("a1.png: trimap size (10, 10) differs" in message for message in result.failures)
    with pytest.raises(FileNotFoundError, match="trimap folder does not exist"):
        SoftTruth(tmp_path / "missing")


def test_model_mode_scores_soft_ground_truth(tmp_path):
    _soft_set(tmp_path, count=2)
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    predictor = Predictor.from_path(tmp_path / "tiny.pt", "cpu")
    pairs = [(tmp_path / "images" / f"a{i}.jpg", tmp_path / "gt" / f"a{i}.png") for i in range(2)]
    result = score_model(predictor, pairs, "soft", num_workers=0, progress=False, soft=SoftTruth(tmp_path / "trimaps"))
    assert result.summary["n_images"] == 2
    assert all(result.summary[f"{key}_band"] >= 0 for key in MATTING)


@pytest.mark.subprocess
def test_cli_writes_the_matting_errors_in_every_table(tmp_path):
    _soft_set(tmp_path)
    done = _evaluate(
        tmp_path, f"pred_dir={tmp_path / 'pred'}", f"gt_dir={tmp_path / 'gt'}", f"trimap_dir={tmp_path / 'trimaps'}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())["pred_dir"]
    assert list(results)[: len(REPORT_KEYS)] == list(REPORT_KEYS)
    assert {f"{key}_band" for key in MATTING} | set(MATTING) <= set(results)
    assert "SAD band" in (out / "results.md").read_text() and "SAD band" in done.stdout
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.endswith("sad_band,mse_band,grad_band,conn_band,sad,mse,grad,conn")
    assert "sad_band" in (out / "per_image.csv").read_text().splitlines()[0]
    # trimaps without soft scoring make no sense: one line, not a silent binary evaluation
    folders = (f"pred_dir={tmp_path / 'pred'}", f"gt_dir={tmp_path / 'gt'}", f"trimap_dir={tmp_path}")
    refused = _evaluate(tmp_path, *folders, "soft_gt=false")
    assert refused.returncode != 0 and "trimap_dir needs soft_gt" in refused.stderr
