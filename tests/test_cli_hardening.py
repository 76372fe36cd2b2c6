"""`u2net remove` hardening (issue 24): the QA table (checked up front, non-UTF-8 names, write errors after
the summary, one row per output across re-runs and interruptions, formula escaping), outputs that would be
inputs, stable output names, stdin/stdout limits and errors, pipes as inputs, unwritable output folders,
format size limits, and SIGTERM."""

from __future__ import annotations

import csv
import errno
import io
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2net.cli import main
from u2net.fileio import TEMP_SUFFIX
from u2net.inference import BackgroundRemover, RemovalOptions, remove_batch
from u2net.inference.planning import plan_outputs
from u2net.inference.qa import MaskQuality, read_qa_csv, write_qa_csv

from .conftest import PLAIN, REPO
from .test_folder_batch import RecordingPredictor, _files, _folder, _photo, _streams
from .test_remover import FakePredictor

NO_PROC = not Path("/proc/self").is_dir()  # /proc: a folder where even root cannot create files


@pytest.fixture
def fake_model(monkeypatch) -> RecordingPredictor:
    predictor = RecordingPredictor()
    monkeypatch.setattr("u2net.cli.common.load_remover", lambda args: BackgroundRemover(predictor))
    return predictor


@pytest.fixture
def no_model(monkeypatch) -> None:
    """The checks under test must fail before the model loads."""

    def refuse(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("u2net.cli.common.load_remover", refuse)


def _rows(table: Path) -> dict[str, tuple[str, str]]:
    """The QA table as {input file name: (confidence, flags)}."""
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {Path(row["input"]).name: (row["confidence"], row["flags"]) for row in csv.DictReader(f)}


def _one_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


# -- M4: the QA table's path, names and write errors ---------------------------------------------
@pytest.mark.parametrize("case", ["folder", "parent is a file", "other csv", "unwritable"])
def test_qa_csv_is_checked_before_the_model_loads(tmp_path, no_model, capsys, case) -> None:
    if case == "unwritable" and NO_PROC:
        pytest.skip("needs /proc")
    _folder(tmp_path / "in", 1)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.csv").write_text("name,price\nwidget,3\n")
    table, expected = {
        "folder": (tmp_path / "in", "is a folder or a special file"),
        "parent is a file": (tmp_path / "notes.txt" / "qa.csv", "notes.txt: exists and is not a folder"),
        "other csv": (tmp_path / "data.csv", "exists and is not a QA table"),
        "unwritable": (Path("/proc/u2net-qa.csv"), "/proc: cannot create files there"),
    }[case]
    assert main(["remove", str(tmp_path / "in"), str(tmp_path / "out"), "-q", "--qa-csv", str(table)]) == 2
    assert expected in _one_error(capsys.readouterr().err)
    assert (tmp_path / "data.csv").read_text() == "name,price\nwidget,3\n"  # the user's file is kept
    assert not (tmp_path / "out").exists()


def test_qa_csv_keeps_names_that_are_not_utf8(tmp_path, fake_model) -> None:
    src = tmp_path / "in"
    src.mkdir()
    encoded = io.BytesIO()
    Image.fromarray(_photo(1)).save(encoded, format="PNG")
    with open(os.fsencode(src) + b"/bad\xff\xe9.png", "wb") as f:
        f.write(encoded.getvalue())
    table = tmp_path / "qa.csv"
    assert main(["remove", str(src), str(tmp_path / "out"), "-q", "--qa-csv", str(table)]) == 0
    assert b"/bad\xff\xe9.png," in table.read_bytes()  # the name's own bytes
    ((names, quality),) = read_qa_csv(table)
    assert Path(names[0]).exists() and Path(names[1]).exists() and quality is not None


def test_a_qa_csv_write_error_is_one_line_after_the_summary(tmp_path, fake_model, monkeypatch, capsys) -> None:
    def read_only(path, rows):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("u2net.inference.qa.write_qa_csv", read_only)
    _folder(tmp_path / "in", 2)
    table = tmp_path / "qa.csv"
    assert main(["remove", str(tmp_path / "in"), str(tmp_path / "out"), "-q", "--qa-csv", str(table)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("2 image(s): 2 written, 0 skipped, 0 failed") and captured.out.count("\n") == 1
    assert _one_error(captured.err) == f"error: {table}: the QA table was not written (Read-only file system)\n"
    assert _files(tmp_path / "out") == ["00.png", "01.png"]


# -- M5: one row per output, across re-runs and interruptions -------------------------------------
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


# -- L8: formula injection -------------------------------------------------------------------------
def test_qa_csv_cells_cannot_be_formulas_and_read_back_exactly(tmp_path) -> None:
    names = ['=HYPERLINK("http://x").png', "+1.png", "-2.png", "@SUM(A1).png", "'quoted.png", "\tx.png", "ok.png"]
    table = tmp_path / "qa.csv"
    rows = [((name, f"out/{name}"), MaskQuality(1.0)) for name in names]
    write_qa_csv(table, rows)
    with open(table, newline="") as f:
        cells = [row[0] for row in csv.reader(f)][1:]
    assert all(cell.startswith("'") for cell in cells[:-1]) and cells[-1] == "ok.png"
    assert [key for key, _ in read_qa_csv(table)] == [(name, f"out/{name}") for name in names]


# -- M6: an output that is an input of the same run -------------------------------------------------
def test_an_output_that_is_another_input_is_refused(tmp_path, fake_model, capsys) -> None:
    root = tmp_path / "root"  # the output folder holds the input folder, which has a sub-folder of its name
    (root / "in" / "in").mkdir(parents=True)
    Image.fromarray(_photo(1)).save(root / "in" / "x.png")
    Image.fromarray(_photo(2)).save(root / "in" / "in" / "x.png")
    photo = (root / "in" / "x.png").read_bytes()
    assert main(["remove", str(root / "in"), str(root), "-q", "--overwrite"]) == 1
    lines = capsys.readouterr().out.splitlines()
    victim = root / "in" / "x.png"
    assert lines == [
        "2 image(s): 1 written, 0 skipped, 1 failed",
        f"  failed: {root / 'in' / 'in' / 'x.png'}: its output {victim} is the input {victim} of this run: not written",
    ]
    assert victim.read_bytes() == photo and (root / "x.png").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_through_a_linked_folder_onto_its_input_is_refused(tmp_path, overwrite) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _folder(src / "sub", 1)
    _folder(src, 1)
    out.mkdir()
    (out / "sub").symlink_to(src / "sub", target_is_directory=True)
    photo = (src / "sub" / "00.png").read_bytes()
    report = remove_batch(BackgroundRemover(RecordingPredictor()), src, out, overwrite=overwrite, progress=False)
    assert (report.done, report.skipped) == (1, 0)
    assert [(p.relative_to(src).as_posix(), why.split(":")[0]) for p, why in report.failures] == [
        ("sub/00.png", f"its output {out / 'sub' / '00.png'} is the input {src / 'sub' / '00.png'} of this run")
    ]
    assert (src / "sub" / "00.png").read_bytes() == photo


# -- L7: output names that do not depend on the other files ---------------------------------------
def test_adding_a_file_never_maps_an_input_onto_another_inputs_output(tmp_path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(_photo(1)).save(src / "a.png")
    Image.fromarray(_photo(2)).save(src / "b.png")
    remover = BackgroundRemover(RecordingPredictor())
    assert remove_batch(remover, src, out, progress=False).done == 2
    # The output a.png.png was that of the input a.png.png (the earlier code) or could be a.png's (with an a.jpg
    # beside it): a.png.png is refused whatever else is there, and a.png as soon as its name would be a.png.png.
    Image.fromarray(_photo(3)).save(src / "a.png.png", format="PNG")
    why = "ambiguous output name: {} and {} may both be written to a.png.png; rename one of them"
    again = remove_batch(remover, src, out, progress=False)
    assert (again.done, again.skipped) == (0, 2)
    assert [(p.name, reason) for p, reason in again.failures] == [("a.png.png", why.format("a.png.png", "a.png"))]
    Image.fromarray(_photo(4)).save(src / "a.jpg")  # a.jpg and a.png now clash: a.png would become a.png.png
    third = remove_batch(remover, src, out, progress=False)
    assert (third.done, third.skipped) == (1, 1)  # a.jpg; b.png. Nothing is "done" on another input's output
    assert [(p.name, reason) for p, reason in third.failures] == [
        ("a.png", why.format("a.png", "a.png.png")),
        ("a.png.png", why.format("a.png.png", "a.png")),
    ]
    assert _files(out) == ["a.jpg.png", "a.png", "b.png"]
    refused: list = []
    pairs = plan_outputs(src, out, refused=refused)
    assert [(a.name, b.name) for a, b in pairs] == [("a.jpg", "a.jpg.png"), ("b.png", "b.png")]
    assert [p.name for p, _ in refused] == ["a.png", "a.png.png"]
    # without a list for them, every input still gets a name of its own
    assert len({b.name.lower() for _, b in plan_outputs(src, out)}) == 4


# -- L4: stdin and stdout --------------------------------------------------------------------------
def _encoded(seed: int = 5) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(_photo(seed)).save(encoded, format="PNG")
    return encoded.getvalue()


def test_stdin_empty_or_too_large_is_one_line(tmp_path, fake_model, monkeypatch, capsys) -> None:
    out = _streams(monkeypatch, b"")
    assert main(["remove", "-", "-", "-q"]) == 1 and out.getvalue() == b""
    assert capsys.readouterr().err.splitlines()[1:] == ["  failed: -: empty input"]
    monkeypatch.setattr("u2net.cli.remove.MAX_STDIN_BYTES", 100)
    out = _streams(monkeypatch, _encoded())
    assert main(["remove", "-", str(tmp_path / "cut.png"), "-q"]) == 1
    sys.stdout.flush()
    assert (
        "  failed: -: more than 0 MB on stdin; save it to a file and give the file's path\n" in out.getvalue().decode()
    )
    assert fake_model.batch_sizes == [] and not (tmp_path / "cut.png").exists()


def test_stdin_and_stdout_write_the_qa_csv(tmp_path, fake_model, monkeypatch) -> None:
    table = tmp_path / "qa.csv"
    _streams(monkeypatch, _encoded())
    assert main(["remove", "-", "-", "-q", "--qa-csv", str(table)]) == 0
    _streams(monkeypatch, _encoded(6))
    assert main(["remove", "-", str(tmp_path / "cut.png"), "-q", "--qa-csv", str(table)]) == 0
    rows = [key for key, quality in read_qa_csv(table) if quality is not None]
    assert rows == [("-", str(tmp_path / "cut.png")), ("-", "-")]  # this run's output, then the earlier one


class _ClosedPipe:
    def write(self, data: bytes) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        pass


def test_a_closed_stdout_is_one_line(tmp_path, fake_model, monkeypatch, capsys) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(_encoded())
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=_ClosedPipe()))
    assert main(["remove", str(photo), "-", "-q"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "1 image(s): 0 written, 0 skipped, 1 failed",
        f"  failed: {photo}: cannot write stdout: BrokenPipeError: [Errno 32] Broken pipe",
    ]


# A `u2net` process whose model is the red channel; argv[1]: seconds each output's write takes (its temporary
# file there meanwhile).
_FAKE_CLI = """
import sys, time
import u2net.cli as cli
import u2net.cli.common
from u2net.inference import BackgroundRemover
from u2net.inference.batch import OutputFormat
from tests.conftest import FullSizePredictor

class Red(FullSizePredictor):
    def predict(self, rgb):
        return rgb[..., 0] / 255.0

real_save, delay = OutputFormat.save, float(sys.argv[1])

def slow_save(self, image, file):
    file.write(b"partial")
    file.flush()
    time.sleep(delay)
    file.seek(0)
    file.truncate()
    real_save(self, image, file)

OutputFormat.save = slow_save
u2net.cli.common.load_remover = lambda args: BackgroundRemover(Red())
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.subprocess
def test_a_closed_stdout_pipe_gives_no_traceback(tmp_path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(_encoded())
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the write gets EPIPE
    try:
        run = subprocess.run(
            [sys.executable, "-c", _FAKE_CLI, "0", "remove", str(photo), "-", "-q"],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "1 image(s): 0 written, 0 skipped, 1 failed",
        f"  failed: {photo}: cannot write stdout: BrokenPipeError: [Errno 32] Broken pipe",
    ]


# -- L5: pipes and devices as inputs ---------------------------------------------------------------
def test_a_pipe_or_device_as_input_is_refused(tmp_path, no_model, capsys) -> None:
    fifo = tmp_path / "photos.png"
    os.mkfifo(fifo)
    for source in (fifo, Path(os.devnull)):
        assert main(["remove", str(source), str(tmp_path / "out"), "-q"]) == 2
        assert "not a file or folder (a pipe, socket or device)" in _one_error(capsys.readouterr().err)
        with pytest.raises(ValueError, match="not a file or folder"):
            plan_outputs(source, tmp_path / "out")
    assert main(["remove", str(fifo), "-", "-q"]) == 2  # read as an image, it would block
    assert "give - and redirect it" in capsys.readouterr().err


# -- L6: unwritable output folders and format size limits, before the model runs --------------------
@pytest.mark.parametrize("case", ["file", "file above", "unwritable"])
def test_an_output_folder_that_cannot_be_written_fails_up_front(tmp_path, no_model, monkeypatch, capsys, case) -> None:
    if case == "unwritable" and NO_PROC:
        pytest.skip("needs /proc")
    _folder(tmp_path / "in", 2)
    (tmp_path / "taken").write_text("a file")
    output, expected = {
        "file": (tmp_path / "taken", "taken: exists and is not a folder"),
        "file above": (tmp_path / "taken" / "cutouts", "taken: exists and is not a folder"),
        "unwritable": (Path("/proc/u2net-cutouts"), "/proc: cannot create files there"),
    }[case]
    assert main(["remove", str(tmp_path / "in"), str(output), "-q"]) == 2
    assert expected in _one_error(capsys.readouterr().err)
    photo = tmp_path / "in" / "00.png"
    assert main(["remove", str(photo), str(output / "cut.png"), "-q"]) == 2
    assert expected in _one_error(capsys.readouterr().err)
    _streams(monkeypatch, _encoded())  # stdin to a file: the same check, of the file's folder
    assert main(["remove", "-", str(output / "cut.png"), "-q"]) == 2
    assert expected in _one_error(capsys.readouterr().err)


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_a_read_only_output_folder_fails_up_front(tmp_path, no_model, capsys) -> None:
    _folder(tmp_path / "in", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["remove", str(tmp_path / "in"), str(locked / "out"), "-q"]) == 2
    finally:
        locked.chmod(0o755)
    assert "locked: cannot create files there (Permission denied)" in _one_error(capsys.readouterr().err)


def test_images_too_large_for_the_format_fail_before_the_model(tmp_path, capsys, monkeypatch) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16400, 8), (200, 10, 10)).save(src / "wide.png")
    Image.new("RGB", (8, 65501), (200, 10, 10)).save(src / "tall.png")
    Image.fromarray(_photo(1)).save(src / "ok.png")
    predictor = FakePredictor(lambda rgb: np.ones(rgb.shape[:2], np.float32))
    monkeypatch.setattr("u2net.cli.common.load_remover", lambda args: BackgroundRemover(predictor))
    assert main(["remove", str(src), str(tmp_path / "webp"), "-q", "--format", "webp"]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        f"  failed: {src / 'tall.png'}: 8×65501 px: WEBP holds at most 16383 px a side; write png instead",
        f"  failed: {src / 'wide.png'}: 16400×8 px: WEBP holds at most 16383 px a side; write png instead",
    ]
    assert {rgb.shape for rgb in predictor.seen} == {(24, 32, 3)}  # the model saw only the photo that fits
    report = remove_batch(
        BackgroundRemover(predictor),
        src,
        tmp_path / "jpeg",
        RemovalOptions(mask_only=True),
        format="jpeg",
        progress=False,
    )
    assert [(p.name, why) for p, why in report.failures] == [
        ("tall.png", "8×65501 px: JPEG holds at most 65500 px a side; write png instead")
    ]
    # A crop's size is known only after the model: it fails then, with the same message.
    cropped = remove_batch(
        BackgroundRemover(predictor),
        src,
        tmp_path / "crop",
        RemovalOptions(crop=True, **PLAIN),
        format="webp",
        progress=False,
    )
    assert [why for _, why in cropped.failures] == [
        "8×65501 px: WEBP holds at most 16383 px a side; write png instead",
        "16400×8 px: WEBP holds at most 16383 px a side; write png instead",
    ]
    predictor.seen.clear()  # one image on stdin: checked from its header too
    _streams(monkeypatch, (src / "wide.png").read_bytes())
    assert main(["remove", "-", "-", "-q", "--format", "webp"]) == 1 and not predictor.seen
    assert "  failed: -: 16400×8 px: WEBP holds at most 16383 px a side" in capsys.readouterr().err


# -- L12: SIGTERM cleans up as Ctrl-C does ---------------------------------------------------------
@pytest.mark.subprocess
def test_sigterm_stops_the_batch_cleanly(tmp_path) -> None:
    src, out, table = tmp_path / "in", tmp_path / "out", tmp_path / "qa.csv"
    _folder(src, 12)
    args = ["remove", str(src), str(out), "-q", "--batch-size", "2", "--workers", "1", "--qa-csv", str(table)]
    proc = subprocess.Popen(
        [sys.executable, "-c", _FAKE_CLI, "0.5", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        # A write under way, after a first one (the writing thread has started long before: a signal while a
        # thread pool starts its thread is another matter)
        while not ((out / "00.png").exists() and [p for p in out.glob("*") if p.name.endswith(TEMP_SUFFIX)]):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM and err.splitlines() == ["terminated"]
    written = _files(out)
    assert 0 < len(written) < 12 and all(name.endswith(".png") for name in written)  # no temporary files
    for name in written:  # every file there is whole
        with Image.open(out / name) as img:
            assert img.size == (32, 24)
    assert sorted(_rows(table)) == written
