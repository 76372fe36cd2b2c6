"""Security and reliability review: file modes and temp files of atomic writes, which decoders may see a
file, pixel limits, NaN in data, palette masks, download pins and dependency floors (the file names in
``u2net remove``'s output: test_cli)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from u2net.data import SourceSpec, collect_pairs
from u2net.data.folder import DatasetCheckError, check_pairs
from u2net.data.io import (
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    VOID_INDEX,
    ImageReadError,
    ImageTooLargeError,
    UnsupportedImageError,
    load_rgb,
    open_image,
    oriented_size,
    read_image,
    read_mask,
)
from u2net.fileio import STALE_TEMP_AGE_S, TEMP_SUFFIX, atomic_write, write_text

from .conftest import EPS, REPO


# -- 6: atomic_write never touches the umask ---------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_atomic_write_never_changes_the_umask(tmp_path, umask_027, monkeypatch) -> None:
    def forbidden(mask):
        raise AssertionError("atomic_write changed the process umask")

    monkeypatch.setattr(os, "umask", forbidden)
    with atomic_write(tmp_path / "new" / "a.bin") as f:
        f.write(b"x")
    monkeypatch.undo()
    assert stat.S_IMODE((tmp_path / "new" / "a.bin").stat().st_mode) == 0o640


def test_concurrent_atomic_writes_get_the_modes_of_the_umask(tmp_path, umask_027, monkeypatch) -> None:
    real_umask = os.umask

    def slow_umask(mask: int) -> int:  # any code setting the umask: the other threads run meanwhile
        old = real_umask(mask)
        time.sleep(0.002)
        return old

    monkeypatch.setattr(os, "umask", slow_umask)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                write_text(tmp_path / f"t{i}" / f"d{j}" / "f.txt", "x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert not errors
    assert os.umask(0o027) == 0o027  # unchanged
    folders = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("t*/d*")}
    files = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("t*/d*/f.txt")}
    assert folders == {0o750} and files == {0o640}
    assert len(list(tmp_path.glob("t*/d*/f.txt"))) == 120


# -- 9: temp files left by a killed process ----------------------------------------------------
def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


@pytest.mark.subprocess
def test_a_killed_write_leaves_a_temp_file_that_a_later_write_removes(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out" / "result.bin"
    code = (
        "import os, signal, sys\n"
        "from u2net.fileio import atomic_write\n"
        "with atomic_write(sys.argv[1]) as f:\n"
        "    f.write(b'partial'); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, capture_output=True, timeout=120)
    assert run.returncode == -signal.SIGKILL
    (left,) = [p for p in target.parent.iterdir()]
    assert left.name.startswith(".result.bin.") and left.name.endswith(TEMP_SUFFIX) and not target.exists()
    with atomic_write(target.parent / "other.bin") as f:  # too recent: could be a write in progress
        f.write(b"y")
    assert left.exists()

    _age(left, STALE_TEMP_AGE_S + 60)
    monkeypatch.setattr("u2net.fileio.TEMP_RESCAN_S", 0)  # a folder is looked at once every few minutes
    with atomic_write(target) as f:
        f.write(b"whole")
    assert not left.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["other.bin", "result.bin"]


def test_only_stale_regular_files_of_our_naming_are_removed(tmp_path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    old = STALE_TEMP_AGE_S + 60
    stale = folder / f".a.png.abc123_z{TEMP_SUFFIX}"
    fresh = folder / f".b.png.zz99aa11{TEMP_SUFFIX}"
    foreign = [
        folder / ".a.png.abc123_z.tmp",
        folder / f"a.png.abc123_z{TEMP_SUFFIX}",
        folder / f".a.toolong99{TEMP_SUFFIX}",
    ]
    for path in (stale, fresh, *foreign):
        path.write_bytes(b"x")
    for path in (stale, *foreign):
        _age(path, old)
    a_folder = folder / f".c.png.abcdefgh{TEMP_SUFFIX}"
    a_folder.mkdir()
    _age(a_folder, old)
    outside = tmp_path / "precious.bin"
    outside.write_bytes(b"keep")
    link = folder / f".l.png.abcdefgh{TEMP_SUFFIX}"
    link.symlink_to(outside)
    _age(outside, old)
    _age(link, old)
    nested = folder / "deeper" / f".n.png.abcdefgh{TEMP_SUFFIX}"
    nested.parent.mkdir()
    nested.write_bytes(b"x")
    _age(nested, old)

    write_text(folder / "new.txt", "x")
    assert not stale.exists()
    assert all(p.exists() for p in (fresh, *foreign, a_folder, nested)) and link.is_symlink() and outside.exists()


# -- 7: decoders and pixel limits ---------------------------------------------------------------
def test_formats_follow_the_extensions() -> None:
    assert IMAGE_FORMATS == ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
    assert {Image.registered_extensions()[ext] for ext in IMAGE_EXTENSIONS} == set(IMAGE_FORMATS)


def test_an_eps_named_png_never_reaches_the_eps_decoder(tmp_path, monkeypatch) -> None:
    reached = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: reached.append(self))
    photo = tmp_path / "photo.png"
    photo.write_bytes(EPS)
    for read in (read_image, read_mask, oriented_size, load_rgb, lambda p: load_rgb(p.read_bytes())):
        with pytest.raises(UnsupportedImageError) as info:
            read(photo)
        message = str(info.value)
        assert "\n" not in message and "JPEG, PNG, BMP, WEBP, TIFF or GIF" in message
    with pytest.raises(UnsupportedImageError, match=f"^{photo}: not a JPEG"):
        read_image(photo)
    assert not reached

    mask = tmp_path / "photo_mask.png"
    Image.new("L", (16, 16)).save(mask)
    (problem,) = check_pairs([(photo, mask)], "full", progress=False)
    assert problem.path == str(photo) and problem.reason.startswith("not a JPEG, PNG")
    (problem,) = check_pairs([(photo, mask)], "header", progress=False)
    assert problem.path == str(photo)
    assert not reached


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header declaring ``width`` × ``height`` and no real pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_limits_are_per_call_and_checked_from_the_header(tmp_path) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageTooLargeError, match=f"^{small}: too many pixels: 100×100 = 10,000; the limit is 9,999$"):
        open_image(small, max_pixels=9_999)
    with open_image(small, max_pixels=10_000) as img:
        assert img.size == (100, 100)
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(20_000, 10_000))  # 200 MP: refused before any decoding
    with pytest.raises(ImageTooLargeError, match=f"^{huge}: too many pixels"):
        read_image(huge)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, untouched


@pytest.mark.subprocess
def test_importing_the_package_leaves_pillows_limit_alone() -> None:
    code = (
        "from PIL import Image\n"
        "before = Image.MAX_IMAGE_PIXELS\n"
        "import u2net.inference, u2net.data, u2net.evaluation\n"
        "assert Image.MAX_IMAGE_PIXELS == before, Image.MAX_IMAGE_PIXELS\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_jpeg_variants_still_open(tmp_path) -> None:
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (8, 6), (200, 10, 10)).save(photo, format="MPO" if "MPO" in Image.SAVE else "JPEG")
    assert read_image(photo).shape == (6, 8, 3)


# -- 11: non-finite values -----------------------------------------------------------------------
def test_the_full_check_refuses_nan_in_float_tiffs(tmp_path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for stem in ("good", "nan_mask", "inf_image"):
        Image.new("RGB", (8, 8), (90, 90, 90)).save(images / f"{stem}.png")
        Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(masks / f"{stem}.tif")
    bad_mask = np.full((8, 8), 0.5, np.float32)
    bad_mask[3, 4] = np.nan
    Image.fromarray(bad_mask).save(masks / "nan_mask.tif")
    bad_image = np.full((8, 8), 0.25, np.float32)
    bad_image[0, 0] = np.inf
    (images / "inf_image.png").unlink()
    Image.fromarray(bad_image).save(images / "inf_image.tif")
    assert np.isnan(np.asarray(Image.open(masks / "nan_mask.tif"))).any()

    source = SourceSpec("mine", str(tmp_path))
    with pytest.raises(DatasetCheckError) as info:
        collect_pairs([source], check="full", progress=False)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert f"{masks / 'nan_mask.tif'}: holds NaN or infinite values" in message
    assert f"{images / 'inf_image.tif'}: holds NaN or infinite values" in message
    with pytest.raises(ImageReadError, match=f"^{masks / 'nan_mask.tif'}: holds NaN"):
        read_mask(masks / "nan_mask.tif")
    with pytest.warns(UserWarning, match="skipping 2 invalid file"):
        kept = collect_pairs([source], check="full", on_invalid="skip", progress=False)
    assert kept == [(images / "good.png", masks / "good.tif")]


# -- 12: palette masks -------------------------------------------------------------------------
def _voc_palette() -> list[int]:
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [224, 224, 192]  # VOC: 0, 1, 2 ... 255
    assert len(palette) == 768
    return palette


def test_palette_masks_are_read_by_index(tmp_path) -> None:
    index = np.zeros((10, 12), np.uint8)
    index[2:8, 3:9] = VOID_INDEX  # the void border around the object
    index[3:7, 4:8] = 1  # the object, coloured (128, 0, 0)
    index[0, 11] = 2  # a second object class
    mask = Image.fromarray(index)
    mask.putpalette(_voc_palette())  # an L image becomes P, its values the indices
    path = tmp_path / "voc.png"
    mask.save(path)
    assert Image.open(path).mode == "P"
    expected = ((index > 0) & (index != VOID_INDEX)).astype(np.float32)
    np.testing.assert_array_equal(read_mask(path), expected)
    assert read_mask(path)[4, 5] == 1.0 and read_mask(path)[2, 3] == 0.0


def test_gray_palettes_and_transparent_palettes_keep_their_values(tmp_path) -> None:
    soft = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (4, 1))
    Image.fromarray(soft, mode="L").convert("P").save(tmp_path / "gray.png")  # PIL picks a gray palette
    assert Image.open(tmp_path / "gray.png").mode == "P"
    np.testing.assert_allclose(read_mask(tmp_path / "gray.png"), soft / 255.0, atol=1e-6)

    binary = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8))
    binary.putpalette([0, 0, 0, 255, 255, 255])
    binary.save(tmp_path / "binary.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "binary.png"), [[0.0, 1.0], [1.0, 0.0]])

    matte = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8))
    matte.putpalette([255, 0, 0, 255, 0, 0, 255, 0, 0])
    matte.save(tmp_path / "matte.png", transparency=bytes([0, 255, 128]))
    np.testing.assert_allclose(read_mask(tmp_path / "matte.png"), [[0.0, 1.0], [128 / 255, 0.0]], atol=1e-6)


# -- 14: download pins and dependency floors ----------------------------------------------------
def test_a_download_with_the_right_md5_but_the_wrong_sha256_is_refused(tmp_path, monkeypatch) -> None:
    import hashlib

    from u2net.models.pretrained import PRETRAINED, PretrainedCfg, WeightsMismatchError, download_weights

    remote = tmp_path / "remote.pth"
    remote.write_bytes(b"pretend these are weights" * 100)
    md5 = hashlib.md5(remote.read_bytes()).hexdigest()
    sha256 = hashlib.sha256(remote.read_bytes()).hexdigest()
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    cfg = PretrainedCfg("u2netp", "pinned.pth", (remote.as_uri(),), sha256="0" * 64, md5=md5)
    monkeypatch.setitem(PRETRAINED, "u2netp.pinned", cfg)
    with pytest.raises(WeightsMismatchError, match="checksum mismatch \\(expected sha256 0{64}"):
        download_weights("u2netp.pinned", progress=False)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir())

    monkeypatch.setitem(PRETRAINED, "u2netp.pinned", replace(cfg, sha256=sha256, md5="0" * 32))
    with pytest.raises(WeightsMismatchError, match="checksum mismatch \\(expected md5 0{32}"):
        download_weights("u2netp.pinned", progress=False)

    monkeypatch.setitem(PRETRAINED, "u2netp.pinned", replace(cfg, sha256=sha256))
    path = download_weights("u2netp.pinned", progress=False)
    assert path.read_bytes() == remote.read_bytes()
    path.write_bytes(b"swapped")  # a cached file is checked against the pins too
    with pytest.raises(WeightsMismatchError, match="pinned.pth: does not match the MD5"):
        download_weights("u2netp.pinned", progress=False)


def test_official_downloads_verify_every_pin_they_have() -> None:
    from u2net.models.pretrained import PRETRAINED, bundled_weights_path, file_digest

    cfg = PRETRAINED["u2netp.duts"]
    bundled = bundled_weights_path("u2netp.duts")
    assert (file_digest(bundled, "md5"), file_digest(bundled, "sha256")) == (
        cfg.onnx_mirror[1],
        cfg.onnx_mirror_sha256,
    )
    for tag, entry in PRETRAINED.items():
        for digest, length in ((entry.md5, 32), (entry.sha256, 64)):
            assert digest is None or (len(digest) == length and int(digest, 16) >= 0), tag


def test_dependency_floors() -> None:
    tomllib = pytest.importorskip("tomllib")
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = [project["dependencies"], *project["optional-dependencies"].values()]
    floors = {
        "torch": "2.6",
        "pillow": "10.3",
        "onnx": "1.16",
        "python-multipart": "0.0.18",
        "fastapi": "0.115.3",
    }
    seen = set()
    for requirement in (Requirement(line) for group in groups for line in group):
        if requirement.name in floors:
            seen.add(requirement.name)
            lowest = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
            assert lowest >= Version(floors[requirement.name]), requirement
            with contextlib.suppress(PackageNotFoundError):  # an extra that is not installed here
                assert requirement.specifier.contains(version(requirement.name), prereleases=True), requirement
    assert seen == set(floors)
