"""Parsing label maps read as masks (CCP's .mat files, LIP/ATR/CIHP-style PNGs) in training and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from u2net.data import DatasetCheckError, folder_datamodule
from u2net.data.io import ImageReadError
from u2net.data.labels import LabelRule, MaskReader, read_label_map
from u2net.evaluation.runner import score_folders

# A 3-class parsing map: 0 background, 1 skin, 2 hair, 5 bag; 255 the void border.
LABELS = np.zeros((30, 40), np.uint8)
LABELS[5:25, 10:30] = 1
LABELS[5:10, 10:30] = 2
LABELS[20:25, 30:36] = 5
LABELS[0, :] = 255


def _photo(path, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _gray_png(path, labels=LABELS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(path)


def _palette_png(path, labels=LABELS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels, mode="L").convert("P")
    img.putpalette([(i * 37) % 256 for i in range(256 * 3)])  # colourful, not gray: an index map
    img.save(path)


def _mat(path, labels=LABELS, key="groundtruth") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {key: labels.astype(np.uint8), "tags": np.array([[1.5, 2.5]])})


def test_rule_parsing() -> None:
    assert LabelRule.parse(None) is None
    assert LabelRule.parse("nonzero") == LabelRule.parse("all") == LabelRule(None)
    assert LabelRule.parse([5, 1, 1]).foreground == (1, 5)
    assert LabelRule.parse("1, 2,5").foreground == (1, 2, 5)
    assert LabelRule.parse(3).foreground == (3,)
    for bad in ("hair", [], [-1], [1.5, "x"]):
        with pytest.raises(ValueError, match="label"):
            LabelRule.parse(bad)


def test_rules_map_labels_to_foreground() -> None:
    everything = LabelRule.parse("nonzero").apply(LABELS)
    assert everything.dtype == np.float32
    np.testing.assert_array_equal(everything, ((LABELS > 0) & (LABELS != 255)).astype(np.float32))
    assert everything[0].max() == 0  # void is background
    subset = LabelRule.parse([1, 2]).apply(LABELS)
    assert subset[22, 32] == 0 and subset[22, 15] == 1 and subset[7, 15] == 1  # the bag is left out


@pytest.mark.parametrize("writer, name", [(_gray_png, "a.png"), (_palette_png, "a.png"), (_mat, "a.mat")])
def test_label_map_files(tmp_path, writer, name) -> None:
    writer(tmp_path / name)
    np.testing.assert_array_equal(read_label_map(tmp_path / name), LABELS)


def test_bad_label_maps_say_which_file_and_why(tmp_path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match=r"rgb\.png: a label map needs one channel"):
        read_label_map(tmp_path / "rgb.png")
    savemat(tmp_path / "two.mat", {"a": LABELS, "b": LABELS})
    with pytest.raises(ImageReadError, match=r"two\.mat: no single 2-D integer label map"):
        read_label_map(tmp_path / "two.mat")
    (tmp_path / "junk.mat").write_bytes(b"not matlab at all")
    with pytest.raises(ImageReadError, match=r"junk\.mat: not a readable MATLAB"):
        read_label_map(tmp_path / "junk.mat")
    _mat(tmp_path / "other_key.mat", key="segmap")  # the only 2-D integer array is taken whatever its name
    np.testing.assert_array_equal(read_label_map(tmp_path / "other_key.mat"), LABELS)


def test_reader_applies_the_deepest_folder_rule(tmp_path) -> None:
    _gray_png(tmp_path / "labels" / "a.png")
    _gray_png(tmp_path / "labels" / "bags" / "b.png")
    _gray_png(tmp_path / "plain" / "c.png", (LABELS > 0).astype(np.uint8) * 255)
    reader = MaskReader({tmp_path / "labels": "nonzero", tmp_path / "labels" / "bags": [5], tmp_path / "x": None})
    assert reader(tmp_path / "labels" / "a.png").sum() == ((LABELS > 0) & (LABELS != 255)).sum()
    assert reader(tmp_path / "labels" / "bags" / "b.png").sum() == (LABELS == 5).sum()
    np.testing.assert_array_equal(reader(tmp_path / "plain" / "c.png"), (LABELS > 0).astype(np.float32))


def _ccp_layout(root, n=4, writer=_mat, ext=".mat") -> None:
    for i in range(1, n + 1):
        _photo(root / "photos" / f"{i:04d}.jpg")
        writer(root / "annotations" / "pixel-level" / f"{i:04d}{ext}")


def test_training_reads_ccp_style_mat_label_maps(tmp_path) -> None:
    _ccp_layout(tmp_path)
    images, masks = tmp_path / "photos", tmp_path / "annotations" / "pixel-level"
    data = folder_datamodule(
        str(images), str(masks), labels="nonzero", val_fraction=0.25, batch_size=1, num_workers=0, progress=False
    )
    data.setup(seed=0)
    assert len(data.train_set) == 3 and len(data.val_set) == 1
    sample = data.val_set[0]
    truth = LabelRule(None).apply(LABELS)
    # The validation transform resizes to 320²: the foreground share survives it.
    assert abs(sample["mask"].float().mean().item() - truth.mean()) < 0.02
    assert sample["mask"].max().item() == 1.0


def test_without_labels_mat_files_are_not_masks(tmp_path) -> None:
    _ccp_layout(tmp_path)
    with pytest.raises(DatasetCheckError, match="no image/mask pairs"):
        folder_datamodule(
            str(tmp_path / "photos"), str(tmp_path / "annotations" / "pixel-level"), num_workers=0, progress=False
        ).setup()


def test_png_label_maps_would_be_nearly_empty_masks_without_the_option(tmp_path) -> None:
    # The reason for the option: read as a mask, label 1 is 1/255, and a person becomes background.
    _ccp_layout(tmp_path, writer=_gray_png, ext=".png")
    args = (str(tmp_path / "photos"), str(tmp_path / "annotations" / "pixel-level"))
    common = {"val_fraction": 0.25, "batch_size": 1, "num_workers": 0, "progress": False}
    common |= {"image_size": 64, "crop_size": None}
    plain, labelled = folder_datamodule(*args, **common), folder_datamodule(*args, labels=[1, 2, 5], **common)
    for data in (plain, labelled):
        data.setup(seed=0)
    assert plain.val_set[0]["mask"][0, 32, 32] < 0.05  # the middle of the person
    assert labelled.val_set[0]["mask"][0, 32, 32] == 1.0


def test_a_bad_label_map_is_found_before_training(tmp_path) -> None:
    _ccp_layout(tmp_path)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "annotations" / "pixel-level" / "0002.png")
    (tmp_path / "annotations" / "pixel-level" / "0002.mat").unlink()
    data = folder_datamodule(
        str(tmp_path / "photos"), str(tmp_path / "annotations" / "pixel-level"), labels="nonzero", progress=False
    )
    with pytest.raises(DatasetCheckError, match=r"0002\.png: .*label map needs one channel"):
        data.setup(check="header")


def test_evaluation_scores_against_label_maps(tmp_path) -> None:
    truth = (LabelRule(None).apply(LABELS) * 255).astype(np.uint8)
    for i in range(3):
        _mat(tmp_path / "gt" / f"{i}.mat")
        _gray_png(tmp_path / "pred" / f"{i}.png", truth)
    perfect = score_folders(tmp_path / "pred", tmp_path / "gt", gt_labels="nonzero", progress=False)
    assert perfect.summary["n_images"] == 3 and perfect.summary["mae"] == 0.0
    only_bags = score_folders(tmp_path / "pred", tmp_path / "gt", gt_labels=[5], progress=False)
    assert only_bags.summary["mae"] > 0.2


def test_evaluate_py_scores_a_folder_of_label_maps(tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from evaluate import dataset_pairs

    from .conftest import REPO

    _ccp_layout(tmp_path, n=3)
    images, masks = tmp_path / "photos", tmp_path / "annotations" / "pixel-level"
    folders = [f"data.images={images}", f"data.masks={masks}", f"data.val_images={images}", f"data.val_masks={masks}"]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.data_dir={tmp_path}", "progress=false"])
        cfg.dataset_overrides = [*folders, "data.labels=nonzero"]
        pairs, read_gt = dataset_pairs("folder", cfg)
    assert [image.stem for image, _ in pairs] == ["0001", "0002", "0003"]
    np.testing.assert_array_equal(read_gt(pairs[0][1]), LabelRule(None).apply(LABELS))
