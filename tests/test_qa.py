"""QA flags and confidence of a mask: what a user triaging a batch relies on."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from u2net.inference.qa import QA_FLAGS, assess_mask


def _mask(*boxes: tuple[int, int, int, int], size: tuple[int, int] = (100, 120)) -> np.ndarray:
    alpha = np.zeros(size, np.uint8)
    for x0, y0, x1, y1 in boxes:
        alpha[y0:y1, x0:x1] = 255
    return alpha


def test_a_clean_centred_subject_is_ok_and_confident() -> None:
    quality = assess_mask(_mask((30, 20, 90, 80)))
    assert quality.ok and quality.flags == () and quality.header_value() == "ok"
    assert quality.confidence == 1.0


@pytest.mark.parametrize(
    ("alpha", "flag"),
    [
        (_mask(), "empty"),
        (_mask((0, 0, 2, 2)), "empty"),  # 4 pixels of 12,000: noise, not a subject
        (_mask((0, 20, 60, 100)), "touches_frame"),
        (_mask((10, 10, 40, 40), (70, 50, 110, 90)), "several_components"),
        (cv2.GaussianBlur(_mask((40, 30, 80, 70)), (0, 0), 6), "uncertain_band"),
    ],
)
def test_each_flag(alpha: np.ndarray, flag: str) -> None:
    quality = assess_mask(alpha)
    assert flag in quality.flags and set(quality.flags) <= set(QA_FLAGS)
    assert not quality.ok and flag in quality.header_value()


def test_confidence_falls_as_the_edges_get_unsure() -> None:
    sharp = _mask((30, 20, 90, 80))
    scores = [assess_mask(cv2.GaussianBlur(sharp, (0, 0), sigma)).confidence for sigma in (1, 3, 8)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    assert assess_mask(_mask()).confidence == 0.0


def test_small_specks_beside_the_subject_are_not_several_components() -> None:
    assert "several_components" not in assess_mask(_mask((30, 20, 90, 80), (100, 5, 102, 7))).flags


def test_refuses_what_is_not_a_uint8_mask() -> None:
    with pytest.raises(ValueError, match="H×W uint8 mask"):
        assess_mask(np.zeros((10, 10), np.float32))


def test_a_batch_writes_its_qa_table_and_counts_the_flagged(tmp_path) -> None:
    import csv

    from PIL import Image

    from u2net.inference import BackgroundRemover
    from u2net.inference.folder import remove_batch

    from .test_remover import FakePredictor

    src = tmp_path / "in"
    src.mkdir()
    subject = np.full((60, 80, 3), 20, np.uint8)
    subject[15:45, 20:60] = 230
    Image.fromarray(subject).save(src / "a.png")
    Image.fromarray(np.full((60, 80, 3), 20, np.uint8)).save(src / "b.png")  # nothing to cut out
    remover = BackgroundRemover(FakePredictor(lambda rgb: (rgb.mean(2) > 128).astype(np.float32)))
    report = remove_batch(remover, src, tmp_path / "out", qa_csv=tmp_path / "qa.csv", progress=False)
    with open(tmp_path / "qa.csv", newline="") as f:
        rows = {Path(row["input"]).name: row for row in csv.DictReader(f)}
    assert rows["a.png"]["flags"] == "ok" and float(rows["a.png"]["confidence"]) == 1.0
    assert rows["b.png"]["flags"] == "empty" and float(rows["b.png"]["confidence"]) == 0.0
    assert Path(rows["a.png"]["output"]).name == "a.png"
    assert report.flagged == 1 and "1 flagged by QA" in report.summary()


def test_the_cli_writes_the_qa_csv_with_each_quality_preset(checkpoint, tmp_path) -> None:
    import csv

    from PIL import Image

    from u2net.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for index in range(2):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            src / f"{index}.png"
        )
    for quality in ("fast", "best"):
        out, table = tmp_path / quality, tmp_path / f"{quality}.csv"
        args = ["remove", str(src), str(out), "-q", "--model", str(checkpoint), "--quality", quality]
        assert main([*args, "--qa-csv", str(table), "--decontaminate"]) == 0
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(Path(row["input"]).name for row in rows) == ["0.png", "1.png"]
        assert all(0.0 <= float(row["confidence"]) <= 1.0 and row["flags"] for row in rows)
    with pytest.raises(SystemExit) as refused:  # argparse: an unknown choice is a usage error
        main(["remove", str(src), str(tmp_path / "x"), "--quality", "ultra"])
    assert refused.value.code == 2
