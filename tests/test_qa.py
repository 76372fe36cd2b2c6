"""QA flags and confidence of a mask, and the QA table of a batch (one row per output across re-runs and
interruptions, cells that cannot be formulas): what a user triaging a batch relies on."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from u2net.inference import BackgroundRemover, RemovalOptions, remove_batch
from u2net.inference.qa import QA_FLAGS, MaskQuality, assess_mask, read_qa_csv, write_qa_csv

from .conftest import RecordingPredictor, _files, _folder, _photo, _rows


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

    from .conftest import FakePredictor

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


# -- the QA table of a batch: one row per output, across re-runs and interruptions -------------
def test_a_rerun_keeps_one_row_per_output(tmp_path) -> None:
    src, out, table = tmp_path / "in", tmp_path / "out", tmp_path / "qa.csv"
    _folder(src, 3)
    remover = BackgroundRemover(RecordingPredictor())
    remove_batch(remover, src, out, progress=False, qa_csv=table)
    first = _rows(table)
    assert sorted(first) == ["00.png", "01.png", "02.png"]
    for seed in (10, 11):  # photos added later
        Image.fromarray(_photo(seed)).save(src / f"{seed}.png")
    again = remove_batch(remover, src, out, progress=False, qa_csv=table)
    assert (again.done, again.skipped) == (2, 3)
    rows = _rows(table)
    assert sorted(rows) == ["00.png", "01.png", "02.png", "10.png", "11.png"]
    assert {name: rows[name] for name in first} == first
    # Without the earlier table, outputs skipped as done are assessed from the alpha on disk: the same rows.
    table.unlink()
    third = remove_batch(remover, src, out, progress=False, qa_csv=table)
    assert third.skipped == 5 and _rows(table) == rows


def test_rows_of_other_outputs_are_kept_and_composites_are_not_assessed(tmp_path) -> None:
    src, table = tmp_path / "in", tmp_path / "qa.csv"
    _folder(src, 2)
    write_qa_csv(table, [(("elsewhere/z.png", "cut/z.png"), MaskQuality(0.5, ("touches_frame",)))])
    remover = BackgroundRemover(RecordingPredictor())
    options = RemovalOptions(bg_color="white")
    remove_batch(remover, src, tmp_path / "out", options, progress=False)  # no table: none to extend
    remove_batch(remover, src, tmp_path / "out", options, progress=False, qa_csv=table)
    rows = _rows(table)
    assert rows["00.png"] == rows["01.png"] == ("", "not_assessed")  # an opaque composite has no mask to read
    assert rows["z.png"] == ("0.5000", "touches_frame")


def test_ctrl_c_still_writes_the_qa_csv(tmp_path) -> None:
    _folder(tmp_path / "in", 12)
    table = tmp_path / "qa.csv"
    predictor = RecordingPredictor(interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        remove_batch(
            BackgroundRemover(predictor), tmp_path / "in", tmp_path / "out", progress=False, batch_size=2, qa_csv=table
        )
    written = _files(tmp_path / "out")
    assert 0 < len(written) < 12 and sorted(_rows(table)) == written


def test_qa_csv_cells_cannot_be_formulas_and_read_back_exactly(tmp_path) -> None:
    names = ['=HYPERLINK("http://x").png', "+1.png", "-2.png", "@SUM(A1).png", "'quoted.png", "\tx.png", "ok.png"]
    table = tmp_path / "qa.csv"
    rows = [((name, f"out/{name}"), MaskQuality(1.0)) for name in names]
    write_qa_csv(table, rows)
    with open(table, newline="") as f:
        cells = [row[0] for row in csv.reader(f)][1:]
    assert all(cell.startswith("'") for cell in cells[:-1]) and cells[-1] == "ok.png"
    assert [key for key, _ in read_qa_csv(table)] == [(name, f"out/{name}") for name in names]
