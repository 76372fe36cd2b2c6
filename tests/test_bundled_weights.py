"""The U²-Net† weights shipped inside the package (``u2net/models/bundled/u2netp.onnx``): present and intact,
resolved from the ``u2netp.duts`` tag without the network, refused when damaged, and run on each backend
(the command's default model: test_cli). Nothing here reads the network or a shared folder."""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks PyPI for updates on import

import hashlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402
from importlib import resources  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from u2net.models import pretrained  # noqa: E402
from u2net.models.pretrained import (  # noqa: E402
    DEFAULT_MODEL,
    WeightsDownloadError,
    bundled_weights_path,
    download_weights,
    get_pretrained_cfg,
)

from .conftest import _disc_photo  # noqa: E402

BUNDLED_MD5 = "8e83ca70e441ab06c318d82300c84806"
BUNDLED_SIZE = 4_574_861
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_checks(monkeypatch) -> set:
    """Forget which bundled files were already MD5-checked in this process."""
    verified: set = set()
    monkeypatch.setattr(pretrained, "_VERIFIED_BUNDLES", verified)
    return verified


# -- the file ----------------------------------------------------------------------------------
def test_bundled_file_is_in_the_installed_package_and_intact() -> None:
    installed = resources.files("u2net.models") / "bundled" / "u2netp.onnx"
    assert installed.is_file(), f"{installed}: missing from the installed package"
    data = installed.read_bytes()
    cfg = get_pretrained_cfg("u2netp.duts").bundled
    assert len(data) == BUNDLED_SIZE
    assert hashlib.md5(data).hexdigest() == BUNDLED_MD5 == cfg.md5
    assert hashlib.sha256(data).hexdigest() == cfg.sha256
    notice = (resources.files("u2net.models") / "bundled" / "NOTICE").read_text(encoding="utf-8")
    assert all(s in notice for s in ("Apache", "github.com/xuebinqin/U-2-Net", "rembg", BUNDLED_MD5, cfg.sha256))


def test_the_general_and_the_person_model_are_bundled() -> None:
    assert DEFAULT_MODEL == "u2netp.duts"
    assert pretrained.bundled_tags() == ["u2netp.duts", "u2netp.person"]  # the default first
    assert bundled_weights_path("u2net.duts") is None


def test_the_person_model_is_intact_with_its_notice_and_model_card() -> None:
    cfg = get_pretrained_cfg("u2netp.person")
    installed = resources.files("u2net.models") / "bundled" / cfg.bundled.name
    data = installed.read_bytes()
    assert hashlib.md5(data).hexdigest() == cfg.bundled.md5 and hashlib.sha256(data).hexdigest() == cfg.bundled.sha256
    assert (
        cfg.architecture == "u2netp"
        and cfg.urls == ()
        and cfg.preprocessing == get_pretrained_cfg(DEFAULT_MODEL).preprocessing
    )
    notice = (resources.files("u2net.models") / "bundled" / "NOTICE").read_text(encoding="utf-8")
    card = (REPO / "docs" / "models" / "u2netp.person.md").read_text(encoding="utf-8")
    for text in (notice, card):
        assert cfg.bundled.md5 in text and "Clothing Co-Parsing" in text


def test_the_person_model_works_offline_everywhere(tmp_path, offline, fresh_checks, capsys) -> None:
    from u2net.cli import main
    from u2net.inference import Predictor

    bundled = download_weights("u2netp.person")
    assert bundled.parent == pretrained.BUNDLED_DIR and bundled.name != "u2netp.onnx"
    photo = _disc_photo(tmp_path / "photo.png")
    assert main(["remove", str(photo), str(tmp_path / "out.png"), "-q", "--model", "u2netp.person"]) == 0
    with Image.open(tmp_path / "out.png") as cutout:
        assert (cutout.mode, cutout.size) == ("RGBA", (64, 48))
    person, general = Predictor.from_path("u2netp.person", "cpu"), Predictor.from_path(DEFAULT_MODEL, "cpu")
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    assert (
        person.info.backend == general.info.backend and np.abs(person.predict(rgb) - general.predict(rgb)).max() > 0.01
    )
    imported = Predictor.from_path("u2netp.person", "cpu", backend="pytorch")  # what evaluate.py and train.py load
    assert np.abs(imported.predict(rgb) - person.predict(rgb)).max() < 1e-3
    import u2net
    from u2net.export import export_onnx

    exported = export_onnx(u2net.load_model("u2netp.person"), tmp_path / "person.onnx")  # what export_onnx.py does
    assert np.abs(Predictor.from_path(exported, "cpu").predict(rgb) - person.predict(rgb)).max() < 1e-3
    assert not offline.exists()


# -- the int8 files: what the CPU default runs -------------------------------------------------
@pytest.mark.parametrize("tag", pretrained.bundled_tags())
def test_each_bundled_model_ships_its_int8_file_which_the_cpu_default_runs(
    tag, offline, fresh_checks, monkeypatch
) -> None:
    from u2net.inference import Predictor
    from u2net.inference.runtime import cpu_flags, int8_saturates

    cfg = get_pretrained_cfg(tag)
    data = (resources.files("u2net.models") / "bundled" / cfg.bundled_int8.name).read_bytes()
    assert hashlib.md5(data).hexdigest() == cfg.bundled_int8.md5
    assert hashlib.sha256(data).hexdigest() == cfg.bundled_int8.sha256
    notice = (resources.files("u2net.models") / "bundled" / "NOTICE").read_text(encoding="utf-8")
    assert cfg.bundled_int8.md5 in notice and f"weights={tag} output={cfg.bundled_int8.name} int8=static" in notice
    rgb = np.asarray(Image.open(REPO / "tests" / "data" / "coffee.jpg").convert("RGB"))
    int8, fp32 = Predictor.from_path(tag, "cpu", precision="int8"), Predictor.from_path(tag, "cpu")
    assert (Path(int8.info.source).name, int8.info.precision) == (cfg.bundled_int8.name, "int8")
    assert (Path(fp32.info.source).name, fp32.info.precision) == (cfg.bundled.name, "fp32")  # the library's default
    # auto: the int8 file, unless this CPU's int8 arithmetic saturates (x86 without VNNI), where it loses accuracy
    vnni, avx2_alone = frozenset({"sse2", "avx2", "avx512_vnni"}), frozenset({"sse2", "avx2"})
    choices = ((vnni, cfg.bundled_int8.name), (avx2_alone, cfg.bundled.name), (None, cfg.bundled_int8.name))
    for flags, expected in choices:
        monkeypatch.setattr("u2net.inference.predictor.cpu_flags", lambda flags=flags: flags)
        assert Path(Predictor.from_path(tag, "cpu", precision="auto").info.source).name == expected
    difference = np.abs(int8.predict(rgb) - fp32.predict(rgb)).mean()
    # measured on this photo: 0.0006 (general) and 0.0029 (person) with VNNI; 0.0016 and 0.0165 with AVX2 alone
    assert difference < (0.03 if int8_saturates(cpu_flags()) else 0.005)
    assert not offline.exists()


def test_int8_needs_an_int8_file_and_onnx_runtime(tmp_path) -> None:
    from u2net.inference import Predictor

    float_file = pretrained.BUNDLED_DIR / get_pretrained_cfg(DEFAULT_MODEL).bundled.name
    with pytest.raises(ValueError, match="no int8 file ships for it; make one"):
        Predictor.from_path(float_file, "cpu", precision="int8")
    assert Predictor.from_path(float_file, "cpu", precision="auto").info.precision == "fp32"  # a file runs as it is
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime"):
        Predictor.from_path(DEFAULT_MODEL, "cpu", precision="int8", backend="pytorch")


# -- resolution without the network ------------------------------------------------------------
def test_tag_resolves_to_the_bundled_file_offline(offline, fresh_checks) -> None:
    from u2net.models.checkpoint import resolve_weights
    from u2net.models.weights import read_checkpoint

    bundled = pretrained.BUNDLED_DIR / "u2netp.onnx"
    assert download_weights("u2netp.duts") == bundled
    assert download_weights("u2netp.duts", directory=offline / "elsewhere") == bundled  # nothing to download
    assert resolve_weights("u2netp.duts") == bundled
    checkpoint = read_checkpoint("u2netp.duts")
    assert checkpoint["model_name"] == "u2netp"
    assert not offline.exists()  # nothing written to the cache
    with pytest.raises(WeightsDownloadError, match="could not download u2net.pth .*network access attempted"):
        download_weights("u2net.duts", progress=False)  # other tags still download: here refused, so offline works


def test_md5_is_checked_once_per_process_and_again_when_the_file_changes(tmp_path, monkeypatch, fresh_checks) -> None:
    copy = tmp_path / "u2netp.onnx"
    shutil.copyfile(pretrained.BUNDLED_DIR / "u2netp.onnx", copy)
    monkeypatch.setattr(pretrained, "BUNDLED_DIR", tmp_path)
    calls = []
    real_digest = pretrained.file_digest
    monkeypatch.setattr(pretrained, "file_digest", lambda *a, **k: calls.append(a) or real_digest(*a, **k))
    assert bundled_weights_path("u2netp.duts") == copy
    assert bundled_weights_path("u2netp.duts") == copy
    assert len(calls) == 1
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed, and a newer modification time
    copy.write_bytes(bytes(data))
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(ValueError, match="damaged"):
        bundled_weights_path("u2netp.duts")
    assert len(calls) == 2


def test_corrupted_bundled_file_is_a_clear_error(tmp_path, monkeypatch, offline, fresh_checks, capsys) -> None:
    from u2net.cli import main

    data = bytearray((pretrained.BUNDLED_DIR / "u2netp.onnx").read_bytes())
    data[1000] ^= 0x01
    (tmp_path / "u2netp.onnx").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "BUNDLED_DIR", tmp_path)
    damaged = tmp_path / "u2netp.onnx"
    pattern = (
        f"^{re.escape(str(damaged))}: the bundled weights of 'u2netp.duts' are damaged \\(md5 [0-9a-f]{{32}}, expected "
    )
    with pytest.raises(ValueError, match=pattern + f"{BUNDLED_MD5}\\); reinstall the package$"):
        download_weights("u2netp.duts")
    photo = _disc_photo(tmp_path / "photo.png")
    assert main(["remove", str(photo), str(tmp_path / "out.png"), "-q", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert str(damaged) in err and "reinstall the package" in err
    assert not (tmp_path / "out.png").exists()

    damaged.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"^{re.escape(str(damaged))}: .* missing from the installed package; reinstall"
    ):
        download_weights("u2netp.duts")


# -- the bundled tag on each backend -----------------------------------------------------------


def test_backend_onnxruntime_runs_the_bundled_tag_and_refuses_what_is_not_onnx(tmp_path, offline, capsys) -> None:
    from u2net.cli import main
    from u2net.inference import Predictor
    from u2net.inference.predictor import _onnx_runtime_suits

    assert Predictor.from_path(DEFAULT_MODEL, "cpu", backend="onnxruntime").info.backend == "onnxruntime"
    # auto: the tag's ONNX file on ONNX Runtime where it runs on the same device (a CPU here); else imported
    on_cpu = "onnxruntime" if _onnx_runtime_suits("cpu", "fp32") else "pytorch"
    assert Predictor.from_path(DEFAULT_MODEL, "cpu").info.backend == on_cpu
    assert Predictor.from_path(DEFAULT_MODEL, "cpu", backend="pytorch").info.backend == "pytorch"
    bundled = str(bundled_weights_path(DEFAULT_MODEL))
    assert Predictor.from_path(bundled, "cpu").info.backend == "onnxruntime"
    assert Predictor.from_path(bundled, "cpu", backend="pytorch").info.backend == "pytorch"  # the file, imported
    photo = _disc_photo(tmp_path / "photo.png")
    assert main(["remove", str(photo), str(tmp_path / "out.png"), "-q", "--backend", "onnxruntime"]) == 0
    other = str(tmp_path / "x.png")
    assert main(["remove", str(photo), other, "--model", "u2net.duts", "--backend", "onnxruntime"]) == 2
    assert "ONNX Runtime needs an .onnx file and its weights are not" in capsys.readouterr().err
    assert not offline.exists()
    assert main(["remove", str(photo), other, "-q", "--model", bundled, "--backend", "pytorch"]) == 0


def test_a_cached_tags_file_is_checked_once_when_loaded(offline, monkeypatch) -> None:
    # the default backend asks which file a tag has before loading it: that question must not hash the file
    # (u2net's is 176 MB) a second time
    from u2net.inference import Predictor

    offline.mkdir(parents=True)
    shutil.copyfile(bundled_weights_path(DEFAULT_MODEL), offline / "u2net.onnx")  # a stand-in for rembg's file
    checked = []
    monkeypatch.setattr(pretrained, "_check_cached", lambda path, *args: checked.append(Path(path).name))
    assert Predictor.from_path("u2net.duts", "cpu").info.backend == "onnxruntime"
    assert checked == ["u2net.onnx"]


# -- packaging ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_carries_the_weights_and_notice(tmp_path) -> None:
    # Built from a copy so no build/ or egg-info appears in the checkout; no build isolation: works offline.
    source = tmp_path / "src"
    shutil.copytree(REPO / "u2net", source / "u2net", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("u2net-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"u2net/models/bundled/u2netp.onnx", "u2net/models/bundled/NOTICE"} <= names
        assert "u2net/models/bundled/u2netp_person.onnx" in names
        assert hashlib.md5(archive.read("u2net/models/bundled/u2netp.onnx")).hexdigest() == BUNDLED_MD5
