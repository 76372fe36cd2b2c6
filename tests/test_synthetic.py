"""Tests for the synthetic DUTS-layout dataset generator (u2net.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2net.data import ensure_synthetic_dataset, generate_synthetic_dataset
from u2net.data import synthetic as synth

SPLITS = {"DUTS-TR": 6, "DUTS-TE": 3}
KW = {"num_train": SPLITS["DUTS-TR"], "num_val": SPLITS["DUTS-TE"], "min_size": 64, "max_size": 96, "progress": False}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data", seed=3, **KW)


def test_layout_and_counts(dataset: Path) -> None:
    assert (dataset / "DONE").is_file()
    readme = (dataset / "README.txt").read_text()
    assert "seed=3" in readme and "6 training" in readme and "3 validation" in readme
    for split, n in SPLITS.items():
        images = sorted((dataset / split / f"{split}-Image").iterdir())
        masks = sorted((dataset / split / f"{split}-Mask").iterdir())
        assert len(images) == len(masks) == n
        assert [p.suffix for p in images] == [".jpg"] * n
        assert [p.suffix for p in masks] == [".png"] * n
        assert [p.stem for p in images] == [p.stem for p in masks] == [f"synth_{i:05d}" for i in range(n)]


def test_images_and_masks(dataset: Path) -> None:
    sizes = set()
    for split in SPLITS:
        for img_path in sorted((dataset / split / f"{split}-Image").iterdir()):
            mask_path = dataset / split / f"{split}-Mask" / f"{img_path.stem}.png"
            with Image.open(img_path) as img, Image.open(mask_path) as mask:
                assert img.format == "JPEG" and img.mode == "RGB"
                assert mask.format == "PNG" and mask.mode == "L"  # single channel, 8 bit
                assert img.size == mask.size
                w, h = img.size
                assert 64 <= w <= 96 and 64 <= h <= 96
                assert w != h  # never square
                sizes.add((w, h))
                m = np.asarray(mask)
            assert m.min() == 0 and m.max() == 255  # both background and foreground
            fg = m.mean() / 255.0
            assert synth._MIN_FG <= fg <= synth._MAX_FG, (img_path.name, fg)
            # Anti-aliased edges: some soft values, but mostly binary.
            soft = ((m > 0) & (m < 255)).mean()
            assert 0 < soft < 0.2
    assert len(sizes) > 1  # sizes vary per image


def test_object_stands_out(dataset: Path) -> None:
    # The masked object should differ clearly in colour from the background around it.
    for img_path in sorted((dataset / "DUTS-TR" / "DUTS-TR-Image").iterdir()):
        img = np.asarray(Image.open(img_path), dtype=np.float64)
        m = np.asarray(Image.open(dataset / "DUTS-TR" / "DUTS-TR-Mask" / f"{img_path.stem}.png"))
        fg, bg = img[m == 255].mean(0), img[m == 0].mean(0)
        assert np.linalg.norm(fg - bg) > 20, img_path.name


def test_deterministic(dataset: Path, tmp_path: Path) -> None:
    again = generate_synthetic_dataset(tmp_path / "again", seed=3, **KW)
    assert _files(again) == _files(dataset)
    other = generate_synthetic_dataset(tmp_path / "other", seed=4, **KW)
    a, b = _files(other), _files(dataset)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith((".jpg", ".png")))


def test_image_independent_of_count(dataset: Path, tmp_path: Path) -> None:
    # Per-image generators: image i is the same whatever the number of images.
    fewer = generate_synthetic_dataset(tmp_path / "fewer", seed=3, **{**KW, "num_train": 2, "num_val": 1})
    for rel in ["DUTS-TR/DUTS-TR-Image/synth_00001.jpg", "DUTS-TE/DUTS-TE-Mask/synth_00000.png"]:
        assert (fewer / rel).read_bytes() == (dataset / rel).read_bytes()


def test_train_val_differ(dataset: Path) -> None:
    train = {p.read_bytes() for p in (dataset / "DUTS-TR" / "DUTS-TR-Mask").iterdir()}
    val = {p.read_bytes() for p in (dataset / "DUTS-TE" / "DUTS-TE-Mask").iterdir()}
    assert not train & val


def test_generate_refuses_existing_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        generate_synthetic_dataset(root, **KW)
    assert (root / "mine.txt").read_text() == "user data"


def test_ensure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "nested" / "data"
    assert ensure_synthetic_dataset(root, seed=1, **KW) == root
    assert (root / "DONE").is_file()

    # Complete dataset: returns immediately without generating again.
    def fail(*args, **kwargs):
        raise AssertionError("should not regenerate")

    monkeypatch.setattr(synth, "generate_synthetic_dataset", fail)
    assert ensure_synthetic_dataset(root, seed=1, **KW) == root

    # Incomplete dataset (no DONE): clear error, nothing deleted.
    (root / "DONE").unlink()
    with pytest.raises(RuntimeError, match="delete it"):
        ensure_synthetic_dataset(root, seed=1, **KW)
    assert (root / "README.txt").is_file()


def test_ensure_regenerates_when_the_arguments_change(tmp_path: Path) -> None:
    root = tmp_path / "data"
    ensure_synthetic_dataset(root, seed=1, **KW)
    first = json.loads((root / "DONE").read_text())
    train = sorted((root / "DUTS-TR" / "DUTS-TR-Image").iterdir())
    before = train[0].read_bytes()
    ensure_synthetic_dataset(root, seed=2, **KW)  # e.g. data.synthetic.seed changed on the command line
    second = json.loads((root / "DONE").read_text())
    assert first["seed"] == 1 and second == {**first, "seed": 2}
    assert train[0].read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary or old copies left


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = synth._render_sample

    def flaky(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt  # like Ctrl-C halfway through
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_render_sample", flaky)
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(root, **KW)
    assert calls == 4
    assert list(tmp_path.iterdir()) == []  # neither root nor the temporary directory remain

    # A later run succeeds.
    monkeypatch.setattr(synth, "_render_sample", real)
    assert (ensure_synthetic_dataset(root, **KW) / "DONE").is_file()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "a", num_train=-1, progress=False)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "b", min_size=100, max_size=50, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "cli"
    synth.main([str(root), "--num-train", "2", "--num-val", "1", "--seed", "5", "--no-progress"])
    assert capsys.readouterr().out.strip() == str(root)
    assert len(list((root / "DUTS-TR" / "DUTS-TR-Image").iterdir())) == 2
    with pytest.raises(SystemExit) as exc:
        synth.main([str(root), "--no-progress"])
    assert exc.value.code == 1
    assert "already exists" in capsys.readouterr().err
