"""evaluate.py: folder mode, model mode (PyTorch and ONNX), the reports, and bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

import u2net
from evaluate import dataset_pairs
from u2net.evaluation import REPORT_KEYS, pair_predictions, score_folders, score_model
from u2net.export import ExportWrapper
from u2net.inference import Predictor, TorchBackend
from u2net.metrics import SaliencyMetrics

from .conftest import REPO, TINY_PREPROCESSING, save_tiny_checkpoint
from .helpers_evaluation import _evaluate

REPORT_FILES = ("results.json", "results.csv", "results.md", "per_image.csv", "pr_curve.png", "f_threshold.png")


def _masks(folder, count=4, size=(40, 30), shift=0, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mask = np.zeros((size[1], size[0]), np.uint8)
        mask[5 + i : 20 + i, 8 + shift : 30 + shift] = 255
        if mode == "RGBA":  # a cut-out, as rembg writes it: the alpha is the mask
            rgba = np.zeros((*mask.shape, 4), np.uint8)
            rgba[..., :3] = 200
            rgba[..., 3] = mask
            Image.fromarray(rgba).save(folder / f"img{i}.png")
        else:
            Image.fromarray(mask).save(folder / f"img{i}.png")


def test_folder_mode_scores_like_the_metrics(tmp_path) -> None:
    _masks(tmp_path / "gt")
    _masks(tmp_path / "pred", shift=2, mode="RGBA")
    result = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    reference = SaliencyMetrics()
    for i in range(4):
        pred = np.asarray(Image.open(tmp_path / "pred" / f"img{i}.png"))[..., 3]
        reference.update(pred, np.asarray(Image.open(tmp_path / "gt" / f"img{i}.png")))
    assert result.summary["n_images"] == 4
    assert result.summary["mae"] == pytest.approx(reference.results()["mae"], abs=1e-12)
    assert 0 < result.summary["mae"] < 0.2


def test_folder_mode_problems_are_reported(tmp_path) -> None:
    _masks(tmp_path / "gt", count=4)
    _masks(tmp_path / "pred", count=3, size=(80, 60))  # img3 missing; the rest of another size
    (tmp_path / "pred" / "img2.png").write_text("not an image")
    (tmp_path / "pred" / "extra.png").write_bytes((tmp_path / "pred" / "img0.png").read_bytes())
    with pytest.warns(UserWarning, match="2 prediction\\(s\\) had another size"):
        result = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    assert result.summary["n_images"] == 2
    text = "\n".join(result.failures)
    assert "img3.png: no prediction with this stem" in text
    assert "img2.png: unreadable prediction" in text
    assert "1 prediction(s) without ground truth ignored" in text
    with pytest.raises(FileNotFoundError, match="nowhere: prediction folder does not exist"):
        pair_predictions(tmp_path / "nowhere", tmp_path / "gt")


def test_nested_predictions_pair_by_their_path(tmp_path) -> None:
    for sub in ("a", "b"):  # as score_model saves datasets of several folders
        _masks(tmp_path / "gt" / sub, count=2)
        _masks(tmp_path / "pred" / sub, count=2, shift=2 if sub == "a" else 0)
    pairs, messages = pair_predictions(tmp_path / "pred", tmp_path / "gt")
    assert [(p.relative_to(tmp_path / "pred").as_posix(), g.parent.name) for p, g in pairs] == [
        ("a/img0.png", "a"),
        ("a/img1.png", "a"),
        ("b/img0.png", "b"),
        ("b/img1.png", "b"),
    ]
    assert messages == []


def test_missing_predictions_can_count_as_empty(tmp_path) -> None:
    _masks(tmp_path / "gt", count=4)
    _masks(tmp_path / "pred", count=3)  # the tool failed on img3
    (tmp_path / "pred" / "img2.png").write_text("not an image")  # and wrote garbage for img2
    left_out = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    counted = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False, missing_as_empty=True)
    assert left_out.summary["n_images"] == 2 and left_out.summary["mae"] == 0.0
    assert counted.summary["n_images"] == 4
    empty_mae = [np.asarray(Image.open(tmp_path / "gt" / f"img{i}.png")).mean() / 255 for i in (2, 3)]
    assert counted.summary["mae"] == pytest.approx(sum(empty_mae) / 4)
    assert any("img3.png: no prediction with this stem" in m and "scored as an empty" in m for m in counted.failures)


@pytest.mark.subprocess
def test_folder_mode_cli_writes_every_report(tmp_path) -> None:
    _masks(tmp_path / "gt")
    _masks(tmp_path / "pred", shift=3)
    done = _evaluate(tmp_path, f"pred_dir={tmp_path / 'pred'}", f"gt_dir={tmp_path / 'gt'}")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "eval"
    for name in (*REPORT_FILES, "gallery.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["pred_dir"]
    assert list(results["pred_dir"]) == list(REPORT_KEYS)
    assert results["pred_dir"]["n_images"] == 4
    assert all(isinstance(v, float) for k, v in results["pred_dir"].items() if k != "n_images")
    assert "pred_dir: 4 image(s) scored" in done.stdout and "maxFβ" in done.stdout
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("dataset,name,image,") and len(rows) == 5


def _checkpoint(tmp_path) -> tuple:
    ckpt = tmp_path / "model.pt"
    return save_tiny_checkpoint(ckpt).eval(), ckpt


SMALL_SYNTHETIC = "dataset_overrides=['data.synthetic.num_train=4','data.synthetic.num_val=6']"


@pytest.mark.subprocess
def test_model_mode_on_synthetic_with_saved_predictions(tmp_path) -> None:
    _, ckpt = _checkpoint(tmp_path)
    done = _evaluate(
        tmp_path,
        f"weights={ckpt}",
        f"paths.data_dir={tmp_path / 'data'}",
        SMALL_SYNTHETIC,
        "save_predictions=true",
        "latency_runs=2",
        "num_workers=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["synthetic"] and results["synthetic"]["n_images"] == 6
    assert list(results["synthetic"]) == list(REPORT_KEYS)
    for name in (*REPORT_FILES, "gallery.png"):
        assert (out / name).is_file(), name
    saved = sorted((out / "predictions" / "synthetic").glob("*.png"))
    masks = sorted((tmp_path / "data" / "synthetic" / "DUTS-TE" / "DUTS-TE-Mask").glob("*.png"))
    assert [p.name for p in saved] == [p.name for p in masks]
    # predictions are written at each image's own size
    assert all(Image.open(p).size == Image.open(m).size for p, m in zip(saved, masks))
    assert "parameters=1,131,181" in done.stdout and "latency_ms_320=" in done.stdout and "input_size=64" in done.stdout
    # scoring the saved PNGs in folder mode gives the same numbers as model mode
    again = score_folders(out / "predictions" / "synthetic", masks[0].parent, progress=False)
    assert again.summary["mae"] == pytest.approx(results["synthetic"]["mae"], abs=1e-9)
    assert again.summary["max_f"] == pytest.approx(results["synthetic"]["max_f"], abs=1e-9)


def test_onnx_model_matches_pytorch(tmp_path) -> None:
    model, ckpt = _checkpoint(tmp_path)

    onnx_path = tmp_path / "model.onnx"  # a bare export without our metadata, like a foreign file
    torch.onnx.export(
        ExportWrapper(model),
        torch.randn(1, 3, 64, 64),
        str(onnx_path),
        input_names=["input"],
        dynamic_axes={"input": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    from_onnx = Predictor.from_path(onnx_path)
    from_torch = Predictor.from_path(ckpt, device="cpu")
    assert from_onnx.input_size == 64  # fixed by the graph
    np.testing.assert_allclose(from_onnx.predict(image), from_torch.predict(image), atol=1e-4)
    assert from_onnx.predict(image).shape == (50, 70)


@pytest.mark.subprocess
def test_bad_input_gives_one_line_errors(tmp_path) -> None:
    nothing = _evaluate(tmp_path)
    assert nothing.returncode == 1 and nothing.stderr.strip().endswith(
        "error: nothing to score: give weights=PATH (a model) or pred_dir=DIR gt_dir=DIR (saved predictions)"
    )
    missing = _evaluate(tmp_path, f"weights={tmp_path / 'nope.pt'}")
    assert missing.returncode == 1 and "nope.pt: weights file not found" in missing.stderr
    _, ckpt = _checkpoint(tmp_path)
    unknown = _evaluate(tmp_path, f"weights={ckpt}", "datasets=[imagenet]")
    assert unknown.returncode == 1 and "unknown dataset 'imagenet'; available:" in unknown.stderr
    no_gt = _evaluate(tmp_path, f"pred_dir={tmp_path}")
    assert no_gt.returncode == 1 and "pred_dir needs gt_dir" in no_gt.stderr
    for result in (nothing, missing, unknown, no_gt):
        assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_several_models_are_compared(tmp_path) -> None:
    _, first = _checkpoint(tmp_path)
    second = tmp_path / "other.pt"
    torch.save({"model": u2net.create_model("u2netp").state_dict(), "model_name": "u2netp"}, second)
    done = _evaluate(
        tmp_path,
        f"weights=[{first},{second}]",
        f"paths.data_dir={tmp_path / 'data'}",
        SMALL_SYNTHETIC,
        "latency_runs=0",
        "num_workers=0",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "eval"
    for label in ("1_model", "2_other"):
        assert json.loads((out / label / "results.json").read_text())["synthetic"]["n_images"] == 6
    comparison = (out / "comparison.md").read_text()
    assert "1_model · synthetic" in comparison and "2_other · synthetic" in comparison
    assert (out / "pr_curve.png").is_file() and (out / "f_threshold.png").is_file()


def test_same_stems_are_reported_not_silently_paired(tmp_path) -> None:
    _masks(tmp_path / "gt", count=2)
    _masks(tmp_path / "pred", count=2)
    inverted = 255 - np.asarray(Image.open(tmp_path / "pred" / "img0.png"))
    Image.fromarray(inverted).save(tmp_path / "pred" / "img0.jpg")  # sorts before img0.png
    pairs, messages = pair_predictions(tmp_path / "pred", tmp_path / "gt")
    assert [pred.name for pred, _ in pairs] == ["img0.jpg", "img1.png"]
    assert any("img0.png: same stem as img0.jpg" in m for m in messages)


def test_model_mode_keeps_images_with_one_stem_in_several_folders_apart(tmp_path) -> None:
    model, _ = _checkpoint(tmp_path)
    predictor = Predictor(TorchBackend(model), {**TINY_PREPROCESSING, "image_size": 32})
    rng = np.random.default_rng(0)
    pairs = []
    for source in ("a", "b"):  # e.g. two sources of one dataset, or a nested folder tree
        (tmp_path / source).mkdir()
        image, gt = tmp_path / source / "0001.jpg", tmp_path / source / "0001.png"
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(image)
        Image.fromarray(np.full((30, 40), 255 if source == "a" else 0, np.uint8)).save(gt)
        pairs.append((image, gt))
    result = score_model(predictor, pairs, "two", num_workers=0, save_dir=tmp_path / "pred", progress=False)
    assert [row["name"] for row in result.per_image] == ["a/0001", "b/0001"]
    assert sorted(p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").rglob("*.png")) == [
        "a/0001.png",
        "b/0001.png",
    ]
    # a model whose output is NaN fails its images, not the run
    broken = Predictor(TorchBackend(_nan_model(model)), {**TINY_PREPROCESSING, "image_size": 32})
    with pytest.raises(ValueError, match="no image could be scored"):
        score_model(broken, pairs, "broken", num_workers=0, progress=False)


def _nan_model(model: torch.nn.Module) -> torch.nn.Module:
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.outconv.bias.fill_(float("nan"))
    return broken


def test_unreadable_gallery_image_is_reported_not_fatal(tmp_path) -> None:
    _masks(tmp_path / "gt", count=2)
    _masks(tmp_path / "pred", count=2, shift=2)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "img0.jpg").write_text("not an image")
    result = score_folders(tmp_path / "pred", tmp_path / "gt", image_dir=tmp_path / "images", progress=False)
    assert result.summary["n_images"] == 2
    assert any("img0.jpg: unreadable image" in message for message in result.failures)
    assert all(item["image"] is None for item in result.worst)


def test_held_out_split_is_scored_for_datasets_without_test_folders(tmp_path) -> None:
    # human_seg has one folder of images and masks; training holds out val_fraction of it
    root = tmp_path / "data" / "human_seg"
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(20):
        Image.fromarray(np.full((16, 16, 3), i * 10, np.uint8)).save(root / "images" / f"p{i:02d}.jpg")
        Image.fromarray(np.full((16, 16), 255 * (i % 2), np.uint8)).save(root / "masks" / f"p{i:02d}.png")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.data_dir={tmp_path / 'data'}", "progress=false"])
        pairs, _ = dataset_pairs("human_seg", cfg)
        train_cfg = compose("train", overrides=["data=human_seg", f"paths.data_dir={tmp_path / 'data'}"])
    data = instantiate(train_cfg.data, _convert_="all", progress=False)
    data.setup(seed=train_cfg.trainer.seed)
    assert pairs == data.val_set.pairs and len(pairs) == 1  # 5 % of 20: what training validated on
