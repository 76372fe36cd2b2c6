"""The ``u2net`` command (``u2net.cli``): its arguments and defaults, exit codes, messages, streams and
signals, for ``remove``, ``serve`` and ``mine``. What the library does behind the command is tested with the
library (test_remover, test_folder_batch, test_planning, test_qa, test_serve, test_mining ...)."""

from __future__ import annotations

import errno
import inspect
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
from u2net.inference.qa import read_qa_csv
from u2net.models.pretrained import DEFAULT_MODEL, get_pretrained_cfg

from .conftest import (
    EPS,
    PLAIN,
    REPO,
    FakePredictor,
    RecordingPredictor,
    _disc_photo,
    _files,
    _folder,
    _photo,
    _picture,
    _pixels,
    _rows,
    _tree,
)

NO_PROC = not Path("/proc/self").is_dir()  # /proc: a folder where even root cannot create files


# -- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture
def fake_model(monkeypatch) -> RecordingPredictor:
    """The command's model: a RecordingPredictor (the red channel as the map); returned to read its batches."""
    predictor = RecordingPredictor()
    monkeypatch.setattr("u2net.cli.common.load_remover", lambda args: BackgroundRemover(predictor))
    return predictor


@pytest.fixture
def no_model(monkeypatch) -> None:
    """The checks under test must fail before the model loads."""

    def refuse(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("u2net.cli.common.load_remover", refuse)


def _one_error(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def _streams(monkeypatch, data: bytes) -> io.BytesIO:
    """Give the command ``data`` on stdin; what it writes to stdout comes back in the returned buffer."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=io.BytesIO(data)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8"))
    return out


def _encoded(seed: int = 5) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(_photo(seed)).save(encoded, format="PNG")
    return encoded.getvalue()


def _fake_model(monkeypatch) -> None:
    """The command's model: every pixel is the subject."""
    remover = BackgroundRemover(FakePredictor(lambda rgb: np.ones(rgb.shape[:2], np.float32)))
    monkeypatch.setattr("u2net.cli.common.load_remover", lambda args: remover)


class _ClosedPipe:
    def write(self, data: bytes) -> int:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def flush(self) -> None:
        pass


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


# -- options, their defaults, and usage errors -------------------------------------------------
def test_remove_and_serve_default_to_the_bundled_tag() -> None:
    from u2net.cli import build_parser

    parser = build_parser()
    for command in (["remove", "in.png", "out.png"], ["serve"]):
        assert parser.parse_args(command).model == DEFAULT_MODEL
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("remove", "serve"):
        assert f"default: {DEFAULT_MODEL}, shipped with the package" in " ".join(
            sub.choices[name].format_help().split()
        )


def test_option_defaults_are_the_dataclasses_defaults() -> None:
    from u2net.cli import build_parser
    from u2net.cli.remove import removal_options
    from u2net.inference.options import RemovalOptions
    from u2net.serve.settings import ServeSettings

    parser = build_parser()
    remove, serve = parser.parse_args(["remove", "in.png", "out.png"]), parser.parse_args(["serve"])
    options, settings = RemovalOptions(), ServeSettings()
    assert removal_options(remove) == options  # no flag given: the library's defaults (the default preset)
    for name in ("workers", "max_queue", "max_upload_mb", "max_pixels", "max_matting_pixels", "max_batch"):
        assert getattr(serve, name) == getattr(settings, name), name
    assert serve.request_timeout_s == settings.request_timeout_s and serve.max_output_mb == settings.max_output_mb


def test_remove_without_model_uses_the_bundled_weights_offline(tmp_path, offline, capsys) -> None:
    photo = _disc_photo(tmp_path / "photo.png")
    out = tmp_path / "out.png"
    assert main(["remove", str(photo), str(out), "-q"]) == 0, capsys.readouterr().err
    with Image.open(out) as cutout:
        assert (cutout.format, cutout.mode, cutout.size) == ("PNG", "RGBA", (64, 48))
        alpha = np.asarray(cutout.getchannel("A"))
    assert np.ptp(alpha) > 128
    # Real weights find the disc: opaque at its centre, transparent in the corners.
    assert alpha[24, 32] > 200 and max(alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]) < 50
    assert not offline.exists()


def test_cli_usage_errors(tmp_path, checkpoint, capsys, monkeypatch) -> None:
    Image.fromarray(_picture()).save(tmp_path / "photo.png")
    photo, out = str(tmp_path / "photo.png"), str(tmp_path / "out")
    assert main(["remove", str(tmp_path / "missing.jpg"), out, "--model", str(checkpoint)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.jpg'}: no such file or folder"
    assert main(["remove", photo, out, "--model", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt: model file not found" in capsys.readouterr().err
    (tmp_path / "broken.onnx").write_text("garbage")
    assert main(["remove", photo, out, "--model", str(tmp_path / "broken.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cannot load the model" in err and len(err.strip().splitlines()) == 1
    assert main(["remove", photo, out, "--model", str(checkpoint), "--backend", "onnxruntime"]) == 2
    assert "ONNX Runtime needs an .onnx file" in capsys.readouterr().err
    (tmp_path / "bg.jpg").write_text("not a jpeg")
    assert main(["remove", photo, out, "--model", str(checkpoint), "--bg-image", str(tmp_path / "bg.jpg")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bg.jpg'}: cannot read the background image") and err.count("\n") == 1

    def offline(url, *args, **kwargs):
        raise OSError(f"<urlopen error no network> ({url})")

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("u2net.models.pretrained.download_file", offline)  # every mirror fails
    assert main(["remove", photo, out, "--model", "u2net.duts"]) == 2  # a tag that is not bundled, offline
    err = capsys.readouterr().err
    assert "could not download the model 'u2net.duts' (offline?); pass --model PATH" in err
    for bad in (["--bg-color", "nocolour"], ["--threshold", "2"], ["--bg-color", "red", "--bg-image", photo]):
        with pytest.raises(SystemExit) as exit_info:
            main(["remove", photo, out, *bad])
        assert exit_info.value.code == 2
    capsys.readouterr()


@pytest.mark.subprocess
def test_cli_entry_point_runs(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "u2net.cli", "remove", str(tmp_path / "in"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2 and done.stderr.strip().endswith("no such file or folder")
    assert "Traceback" not in done.stderr


def test_cli_views_and_sharpen_override_the_preset(tmp_path, fake_model, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(2)).save(photo)
    red = _photo(2)[..., 0].astype(np.float64)
    plain = np.rint((red - red.min()) / (red.max() - red.min()) * 255)  # the map, stretched: nothing else
    # (flags, the model's runs in order): the fake map is unsure, so the default's mirror view follows the photo's
    for case, (extra, runs) in enumerate(
        (
            ([], [1, 1]),
            (["--views", "1"], [1]),
            (["--quality", "best"], [4]),
            (["--quality", "fast", "--views", "4"], [1, 3]),
            (["--unsure-share", "0"], [2]),
        )
    ):
        before = len(fake_model.batch_sizes)
        assert main(["remove", str(photo), str(tmp_path / f"cut{case}.png"), "-q", *extra]) == 0
        assert fake_model.batch_sizes[before:] == runs, extra
    assert main(["remove", str(photo), str(tmp_path / "plain.png"), "-q", "--views", "1", "--sharpen", "1"]) == 0
    with Image.open(tmp_path / "plain.png") as out:
        np.testing.assert_array_equal(np.asarray(out.getchannel("A")), plain)
    with pytest.raises(SystemExit):
        main(["remove", str(photo), str(tmp_path / "x.png"), "--views", "3"])
    with pytest.raises(SystemExit):
        main(["remove", str(photo), str(tmp_path / "x.png"), "--sharpen", "0"])
    assert "invalid choice: 3" in capsys.readouterr().err


def test_cli_providers_and_input_size_errors(tmp_path, capsys) -> None:
    from u2net.models.pretrained import DEFAULT_MODEL, bundled_weights_path

    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    args = ["remove", str(photo), str(tmp_path / "out.png"), "-q"]
    assert main([*args, "--providers", "NoSuchThing"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --providers: unknown ONNX Runtime provider 'NoSuchThing'\n"
    assert main([*args, "--providers", "CPU", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert "precision fp16 on ONNX Runtime needs its OpenVINO execution provider" in err and err.count("\n") == 1
    # on PyTorch (the bundled tag with fp16 goes there) a CPU cannot autocast to fp16: said once, at load time
    assert main([*args, "--precision", "fp16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fp16 needs CUDA" in err and err.count("\n") == 1
    import onnxruntime

    missing = [p for p in onnxruntime.get_all_providers() if p not in onnxruntime.get_available_providers()]
    assert main([*args, "--providers", missing[0].removesuffix("ExecutionProvider")]) == 2
    err = capsys.readouterr().err
    assert f"none of {missing[0]} is available in this ONNX Runtime" in err and err.count("\n") == 1

    onnx_file = str(bundled_weights_path(DEFAULT_MODEL))  # exported at a fixed 1×3×320×320
    assert main([*args, "--model", onnx_file, "--input-size", "512"]) == 2
    err = capsys.readouterr().err
    assert "input is fixed at 320x320, so an input size of 512 cannot change it" in err and err.count("\n") == 1
    assert main([*args, "--model", onnx_file, "--providers", "cpu", "--batch-size", "2"]) == 0
    assert Image.open(tmp_path / "out.png").mode == "RGBA"


def test_cli_passes_the_input_size_providers_and_precision_to_the_predictor(tmp_path, monkeypatch) -> None:
    seen = {}

    def from_path(source, device, **kwargs):
        seen.update(kwargs)
        predictor = RecordingPredictor()
        predictor.backend = types.SimpleNamespace(fixed_size=None)
        return predictor

    monkeypatch.setattr("u2net.inference.Predictor.from_path", from_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    assert main(["remove", str(photo), str(tmp_path / "o.png"), "-q", "--input-size", "512", "--providers", "CPU"]) == 0
    assert seen == {
        "precision": "auto",  # the default: the bundled int8 file on a CPU whose int8 is exact, else fp32
        "image_size": 512,
        "backend": "onnxruntime",
        "providers": ["CPUExecutionProvider"],
    }
    assert main(["remove", str(photo), str(tmp_path / "p.png"), "-q", "--precision", "bf16"]) == 0
    # no --providers: --backend auto picks (PyTorch, for bf16)
    assert seen["precision"] == "bf16" and seen["backend"] == "auto"


# -- u2net remove: a file or a folder, exit codes and the summary ------------------------------
def test_cli_single_file_mask_only(tmp_path, checkpoint, capsys) -> None:
    Image.fromarray(_picture(30, 40)).save(tmp_path / "photo.jpg")
    out = tmp_path / "mask.png"
    args = ["remove", str(tmp_path / "photo.jpg"), str(out), "--model", str(checkpoint), "--mask-only", "-q"]
    assert main(args) == 0
    assert "1 image(s): 1 written, 0 skipped, 0 failed" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.mode == "L" and img.size == (40, 30)
    assert main([*args[:2], str(tmp_path / "folder"), *args[3:]]) == 0  # an output folder: <stem>.png inside
    assert (tmp_path / "folder" / "photo.png").is_file()
    # --no-stretch keeps the model's probabilities: the random model's map is not spread to 0..255
    assert main([*args, "--overwrite"]) == 0 and np.ptp(np.asarray(Image.open(out))) == 255
    assert main([*args, "--overwrite", "--no-stretch"]) == 0 and np.ptp(np.asarray(Image.open(out))) < 255


def test_cli_batch_exit_codes_and_overwrite(tmp_path, checkpoint, capsys) -> None:
    _tree(tmp_path / "in")
    args = ["remove", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(checkpoint), "--device", "cpu", "-q"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "5 image(s): 3 written, 0 skipped, 2 failed" in out
    assert "failed: " in out and "notes.png: not a JPEG, PNG" in out and "truncated.jpg: OSError" in out
    assert main(args) == 1
    assert "0 written, 3 skipped (output exists; --overwrite to replace), 2 failed" in capsys.readouterr().out
    assert main([*args, "--overwrite", "--bg-color", "white", "--crop"]) == 1
    assert "3 written" in capsys.readouterr().out
    assert Image.open(tmp_path / "out" / "a.png").mode == "RGB"


def test_cli_formats_from_the_suffix_or_the_option(tmp_path, fake_model, capsys) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(_photo(1)).save(photo)
    assert main(["remove", str(photo), str(tmp_path / "cut.webp"), "-q"]) == 0
    assert Image.open(tmp_path / "cut.webp").format == "WEBP"
    assert main(["remove", str(photo), str(tmp_path / "cut.jpg"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: JPEG outputs cannot be transparent: add --bg-color") and err.count("\n") == 1
    assert (
        main(["remove", str(photo), str(tmp_path / "cut.jpg"), "-q", "--bg-color", "white", "--output-quality", "70"])
        == 0
    )
    assert Image.open(tmp_path / "cut.jpg").format == "JPEG"
    assert main(["remove", str(photo), str(tmp_path / "c.png"), "--output-quality", "70"]) == 2
    assert "--output-quality: quality applies to webp and jpeg" in capsys.readouterr().err
    _folder(tmp_path / "in", 3)
    args = ["remove", str(tmp_path / "in"), str(tmp_path / "out"), "-q", "--format", "webp", "--batch-size", "2"]
    assert main(args) == 0 and _files(tmp_path / "out") == ["00.webp", "01.webp", "02.webp"]
    assert "3 image(s): 3 written, 0 skipped, 0 failed" in capsys.readouterr().out
    # each batch of two photos, then their mirror images (the fake map is unsure everywhere: the default's rule)
    assert sorted(fake_model.batch_sizes[-4:]) == [1, 1, 2, 2]


def test_cli_prints_warnings_as_one_line(tmp_path, capsys) -> None:
    # a flat grey photo: the bundled model finds no sure foreground, so matting keeps the mask and says so
    photo = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(photo)
    assert main(["remove", str(photo), str(tmp_path / "out.png"), "--alpha-matting", "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: alpha matting skipped: the trimap has no sure foreground or no sure background\n" in err
    assert "UserWarning" not in err and "remover.py" not in err
    assert (tmp_path / "out.png").exists()


def test_the_cli_writes_the_qa_csv_with_each_quality_preset(checkpoint, tmp_path) -> None:
    import csv

    from PIL import Image

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


# -- u2net remove --qa-csv: checked before the model loads, names, write errors ----------------
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


# -- u2net remove: file names and links in what it prints --------------------------------------
def test_the_cli_refuses_an_eps_named_png_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    _fake_model(monkeypatch)
    src = tmp_path / "in"
    src.mkdir()
    (src / "photo.png").write_bytes(EPS)
    assert main(["remove", str(src), str(tmp_path / "out"), "-q"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[1]
        == f"  failed: {src / 'photo.png'}: not a JPEG, PNG, BMP, WEBP, TIFF or GIF image (another format, or damaged)"
    )


def test_links_not_followed_are_named_as_skipped(tmp_path, monkeypatch, capsys) -> None:
    _fake_model(monkeypatch)
    src, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(src / "ok.png")
    Image.new("RGB", (8, 8)).save(elsewhere / "hidden.png")
    (src / "broken.png").symlink_to(tmp_path / "gone.png")
    (src / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image name: not worth a line
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    assert main(["remove", str(src), str(tmp_path / "out"), "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "1 image(s): 1 written, 0 skipped, 0 failed; 2 link(s)/folder(s) skipped",
        f"  skipped: {src / 'broken.png'}: broken symbolic link",
        f"  skipped: {src / 'linked'}: symbolic link to a folder (not followed)",
    ]


def test_a_newline_in_a_file_name_cannot_fake_a_line(tmp_path, monkeypatch, capsys) -> None:
    _fake_model(monkeypatch)
    src = tmp_path / "in"
    src.mkdir()
    (src / "x\n  failed: innocent.png: \x1b[2Kfake.png").write_bytes(b"not an image")
    (src / "y\u202egnp.png").write_bytes(b"not an image either")
    assert main(["remove", str(src), str(tmp_path / "out"), "-q"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"  failed: {src}") for line in lines[1:])
    assert "x\\n  failed: innocent.png: \\x1b[2Kfake.png: " in lines[1] and "y\\u202egnp.png: " in lines[2]


def test_non_utf8_names_print_on_a_strict_stdout(tmp_path, monkeypatch) -> None:
    _fake_model(monkeypatch)
    src = tmp_path / "in"
    src.mkdir()
    fd = os.open(os.fsencode(src) + b"/bad\xff\xe9.png", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"corrupt")
    os.close(fd)
    (src / "café\u00a0.png").write_bytes(b"also corrupt")
    buffer = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buffer, encoding="ascii", errors="strict"))
    assert main(["remove", str(src), str(tmp_path / "out"), "-q"]) == 1
    sys.stdout.flush()
    out = buffer.getvalue().decode("ascii")
    assert "bad\\xff\\xe9.png: " in out and "caf\\xe9\\xa0.png: " in out and "2 failed" in out


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


# -- u2net remove: inputs and outputs refused before the model runs ----------------------------
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


# -- u2net remove: stdin and stdout ------------------------------------------------------------
def test_cli_stdin_and_stdout(tmp_path, fake_model, monkeypatch, capsys) -> None:
    encoded = io.BytesIO()
    Image.fromarray(_photo(5)).save(encoded, format="JPEG")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(encoded.getvalue())

    out = _streams(monkeypatch, encoded.getvalue())
    assert main(["remove", "-", "-", "-q"]) == 0
    with Image.open(io.BytesIO(out.getvalue())) as img:
        assert img.format == "PNG" and img.mode == "RGBA" and img.size == (32, 24)
    assert "1 image(s): 1 written" in capsys.readouterr().err  # the summary keeps off the image's stream
    streamed = out.getvalue()

    _streams(monkeypatch, encoded.getvalue())
    assert main(["remove", "-", str(tmp_path / "from_stdin.png"), "-q"]) == 0
    assert np.array_equal(_pixels(tmp_path / "from_stdin.png"), np.asarray(Image.open(io.BytesIO(streamed))))

    out = _streams(monkeypatch, b"")
    assert main(["remove", str(photo), "-", "-q", "--format", "webp", "--mask-only"]) == 0
    with Image.open(io.BytesIO(out.getvalue())) as img:
        assert img.format == "WEBP"  # WebP has no grayscale: a mask comes back as equal RGB channels
        mask = np.asarray(img.convert("RGB"))
        assert (mask == mask[..., :1]).all()

    out = _streams(monkeypatch, b"not an image")
    assert main(["remove", "-", "-", "-q"]) == 1 and out.getvalue() == b""
    assert "failed: -: not a JPEG, PNG" in capsys.readouterr().err
    assert main(["remove", str(tmp_path), "-", "-q"]) == 2
    assert "a folder's outputs cannot go to stdout" in capsys.readouterr().err


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


def test_a_closed_stdout_is_one_line(tmp_path, fake_model, monkeypatch, capsys) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(_encoded())
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=_ClosedPipe()))
    assert main(["remove", str(photo), "-", "-q"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "1 image(s): 0 written, 0 skipped, 1 failed",
        f"  failed: {photo}: cannot write stdout: BrokenPipeError: [Errno 32] Broken pipe",
    ]


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


# -- u2net remove: SIGTERM cleans up as Ctrl-C does --------------------------------------------
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


# -- u2net serve -------------------------------------------------------------------------------
def test_serve_command_builds_the_app_and_runs_uvicorn(monkeypatch, checkpoint, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    import torch
    import uvicorn
    from fastapi.testclient import TestClient

    from u2net.serve import ServeSettings

    seen = {}

    def fake_run(app, host, port, log_level):
        seen.update(app=app, host=host, port=port)
        with TestClient(app, base_url=f"http://localhost:{port}") as client:  # lifespan: warm-up, then serve
            seen["health"] = client.get("/health").json()
            seen["info"] = client.get("/model-info").json()
            seen["rebound"] = client.get("/health", headers={"host": "evil.example"}).status_code

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.setdefault("torch_threads", n))
    status = main(
        ["serve", "--model", str(checkpoint), "--device", "cpu", "--port", "8123", "--storage-root", str(tmp_path)]
        + ["--workers", "3", "--max-upload-mb", "5", "--max-batch", "4", "--timeout", "9", "--cors-origin", "*"]
    )
    assert status == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    settings = seen["app"].state.settings
    assert (settings.workers, settings.max_upload_mb, settings.max_batch, settings.request_timeout_s) == (3, 5, 4, 9)
    assert Path(settings.storage_root) == tmp_path and settings.cors_origins == ["*"]
    assert seen["health"]["status"] == "ok" and seen["info"]["name"] == "u2netp"
    assert seen["torch_threads"] == max(1, (os.cpu_count() or 1) // 3)  # cores shared by the 3 workers
    assert settings.allowed_hosts == ["127.0.0.1", "localhost", "[::1]"] and seen["rebound"] == 400  # strict
    default = ServeSettings()
    assert (settings.max_matting_pixels, settings.max_output_mb) == (default.max_matting_pixels, default.max_output_mb)

    status = main(
        ["serve", "--model", str(checkpoint), "--device", "cpu", "--host", "0.0.0.0", "--port", "8123"]
        + ["--allowed-hosts", "api.example.com, 10.0.0.5", "--allowed-hosts", "*.lan"]
        + ["--max-matting-pixels", "90000", "--max-output-mb", "8"]
    )
    assert status == 0
    settings = seen["app"].state.settings
    assert settings.allowed_hosts == ["localhost", "127.0.0.1", "[::1]", "api.example.com", "10.0.0.5", "*.lan"]
    assert (settings.max_matting_pixels, settings.max_output_mb) == (90_000, 8)


def test_serve_command_usage_errors(tmp_path, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")

    assert main(["serve", "--model", str(tmp_path / "missing.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--storage-root", str(tmp_path / "nope")]) == 2
    assert "storage root" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "missing.pt"), "--allowed-hosts", "example.com:80"]) == 2
    assert "without a port" in capsys.readouterr().err


def test_serve_without_model_serves_the_bundled_file_offline(offline, monkeypatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    pytest.importorskip("httpx")
    import torch
    import uvicorn
    from fastapi.testclient import TestClient

    from u2net.serve import create_app

    assert inspect.signature(create_app).parameters["remover_or_model_path"].default == DEFAULT_MODEL
    seen = {}

    def fake_run(app, host, port, log_level):  # in-memory requests instead of a listening server
        # As a browser on the same machine would call it: the service answers only its own host names.
        with TestClient(app, base_url=f"http://{host}:{port}") as client:
            seen["info"] = client.get("/model-info").json()

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the test process keeps its threads
    # a CPU whose int8 arithmetic is exact (VNNI), whatever this machine's is
    monkeypatch.setattr("u2net.inference.predictor.cpu_flags", lambda: frozenset({"sse2", "avx2", "avx512_vnni"}))
    assert main(["serve", "--device", "cpu", "--workers", "1"]) == 0
    info = seen["info"]  # on such a CPU the default runs the bundled int8 file, and says so
    assert info["name"] == "u2netp" and info["file"] == "u2netp_int8.onnx" and info["precision"] == "int8"
    assert info["model"] == DEFAULT_MODEL and info["choices"] == ["u2netp.duts", "u2netp.person"]
    assert info["sha256"] == get_pretrained_cfg("u2netp.duts").bundled_int8.sha256
    assert main(["serve", "--device", "cpu", "--workers", "1", "--precision", "fp32"]) == 0
    info = seen["info"]  # --precision fp32 keeps the float file
    assert info["file"] == "u2netp.onnx" and info["precision"] == "fp32"
    assert info["sha256"] == get_pretrained_cfg("u2netp.duts").bundled.sha256


# -- u2net mine --------------------------------------------------------------------------------
def test_the_cli(checkpoint, photos, tmp_path, capsys) -> None:
    out = tmp_path / "mined"
    code = main(["mine", str(photos), str(out), "--top", "2", "--model", str(checkpoint), "--device", "cpu", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote the 2 least sure" in captured.out and "data.masks=" in captured.out
    assert "skipped" in captured.err and "broken.png" in captured.err
    assert len(list((out / "masks").iterdir())) == 2
    again = main(["mine", str(photos), str(out), "--model", str(checkpoint), "--device", "cpu", "-q"])
    assert again == 2 and "already exists" in capsys.readouterr().err
    assert main(["mine", str(tmp_path / "nowhere"), str(out), "--model", str(checkpoint)]) == 2
    assert "not a folder of photos" in capsys.readouterr().err
