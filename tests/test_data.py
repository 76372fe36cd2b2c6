"""Dataset pairing, mask decoding, the pre-training check, augmentation and the resumable sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from u2net.data import (
    DatasetCheckError,
    ResumableBatchSampler,
    SaliencyDataModule,
    SourceSpec,
    collect_pairs,
    eval_transform,
    normalize_image,
    read_image,
    read_mask,
    scan_source,
    train_transform,
)
from u2net.data.io import to_rgb
from u2net.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _image(path, size=(40, 30), mode="RGB", value=None) -> None:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if value is None else value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)


def _mask(path, size=(40, 30), scale=255) -> None:
    array = np.zeros((size[1], size[0]), np.uint8)
    array[5:20, 10:30] = scale
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _source(root) -> SourceSpec:
    return SourceSpec(name="toy", root=str(root), images="im", masks="gt")


def test_pairs_by_stem_across_extensions(tmp_path) -> None:
    for stem, ext in [("a", ".jpg"), ("b", ".jpeg"), ("c", ".png"), ("d", ".bmp"), ("e", ".webp"), ("f", ".tif")]:
        _image(tmp_path / "im" / f"{stem}{ext}")
        _mask(tmp_path / "gt" / f"{stem}{'.png' if ext != '.png' else '.bmp'}")
    scan = scan_source(_source(tmp_path))
    assert not scan.problems
    assert sorted(i.stem for i, _ in scan.pairs) == list("abcdef")
    assert all(i.stem == m.stem for i, m in scan.pairs)


def test_mask_codings(tmp_path) -> None:
    gray = np.zeros((4, 6), np.uint8)
    gray[1:3, 2:5] = 255
    gray[0, 0] = 128  # a soft value is kept
    expected = gray.astype(np.float32) / 255
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, axis=2)).save(tmp_path / "rgb.png")
    Image.fromarray((gray > 0).astype(np.uint8)).save(tmp_path / "01.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = gray
    Image.fromarray(rgba).save(tmp_path / "matte.png")
    red = np.zeros((4, 6, 3), np.uint8)
    red[..., 0] = gray
    Image.fromarray(red).save(tmp_path / "red.png")
    for name in ("gray", "rgb", "16bit", "matte", "red"):
        np.testing.assert_allclose(read_mask(tmp_path / f"{name}.png"), expected, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(read_mask(tmp_path / "01.png"), (gray > 0).astype(np.float32))


def test_read_image_modes(tmp_path) -> None:
    base = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for mode in ("L", "LA", "P", "RGB", "RGBA", "CMYK"):
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.fromarray(base).convert(mode).save(path)
        image = read_image(path)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8, mode
    Image.fromarray(base[..., 0].astype(np.uint16) * 257).save(tmp_path / "16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "16.png")[..., 1], base[..., 0])
    # EXIF orientation 6 (rotate 90° clockwise) is applied: a 7×5 file becomes 5×7.
    img = Image.fromarray(base)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (7, 5, 3)


def test_sixteen_bit_images_read_alike_in_either_byte_order() -> None:
    values = np.array([[0, 100, 200, 255]], np.uint16)  # a dark 16-bit image, not a bright 8-bit one
    little = to_rgb(Image.frombytes("I;16", (4, 1), values.tobytes()))
    big = to_rgb(Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes()))
    np.testing.assert_array_equal(big, little)
    assert little[0, :, 0].tolist() == [0, 0, 1, 1]


def test_orphans_corrupt_and_size_mismatch_are_listed(tmp_path) -> None:
    _image(tmp_path / "im" / "good.jpg")
    _mask(tmp_path / "gt" / "good.png")
    _image(tmp_path / "im" / "no_mask.jpg")
    _mask(tmp_path / "gt" / "no_image.png")
    _image(tmp_path / "im" / "small.jpg", size=(20, 20))
    _mask(tmp_path / "gt" / "small.png")
    _image(tmp_path / "im" / "truncated.jpg")
    data = (tmp_path / "im" / "truncated.jpg").read_bytes()
    (tmp_path / "im" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    _mask(tmp_path / "gt" / "truncated.png")
    _image(tmp_path / "im" / "text.jpg")
    (tmp_path / "gt" / "text.png").write_text("this is not a png")

    with pytest.raises(DatasetCheckError) as info:
        collect_pairs([_source(tmp_path)], progress=False)
    message = str(info.value)
    assert "5 problem(s)" in message and "data.on_invalid=skip" in message
    assert "no_mask.jpg: no mask with this stem" in message
    assert "no_image.png: no image with this stem" in message
    assert "small.png: mask is 40×30 but its image is 20×20" in message
    assert "truncated.jpg: unreadable or corrupt" in message
    assert "text.png: not a JPEG, PNG, BMP, WEBP, TIFF or GIF image" in message  # by content, not by name
    assert "good" not in message

    with pytest.warns(UserWarning, match="skipping 5 invalid file"):
        pairs = collect_pairs([_source(tmp_path)], on_invalid="skip", progress=False)
    assert [p[0].name for p in pairs] == ["good.jpg"]


def test_header_check_finds_sizes_without_decoding(tmp_path) -> None:
    _image(tmp_path / "im" / "a.jpg", size=(20, 20))
    _mask(tmp_path / "gt" / "a.png")
    with pytest.raises(DatasetCheckError, match="a.png: mask is 40×30"):
        collect_pairs([_source(tmp_path)], check="header", progress=False)


def test_no_pairs_and_missing_folder(tmp_path) -> None:
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(DatasetCheckError, match="dataset toy: no image/mask pairs found"):
        collect_pairs([_source(tmp_path)], progress=False)
    with pytest.raises(DatasetCheckError, match="mask folder .*nowhere does not exist"):
        scan_source(SourceSpec("toy", str(tmp_path), "im", "nowhere"))


def test_original_normalisation() -> None:
    image = np.random.default_rng(0).integers(0, 200, (6, 5, 3), dtype=np.uint8)
    tensor = normalize_image(image)
    scaled = image.astype(np.float64) / image.max()
    for c in range(3):
        expected = (scaled[..., c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        np.testing.assert_allclose(tensor[c].numpy(), expected, atol=1e-5)
    assert torch.isfinite(normalize_image(np.zeros((4, 4, 3), np.uint8))).all()


def test_train_transform_recipe_and_seeding() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mask = (rng.random((300, 400)) > 0.5).astype(np.float32)
    transform = train_transform(320, 288, hflip=0.5)
    a_img, a_mask = transform(image, mask, seed=7)
    b_img, b_mask = transform(image, mask, seed=7)
    assert a_img.shape == (3, 288, 288) and a_mask.shape == (1, 288, 288)
    assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    others = [transform(image, mask, seed=s)[0] for s in range(8, 12)]
    assert any(not torch.equal(a_img, o) for o in others)
    v_img, v_mask = eval_transform(320)(image, mask)
    assert v_img.shape == (3, 320, 320) and v_mask.shape == (1, 320, 320)
    assert v_mask.min() >= 0 and v_mask.max() <= 1


def test_flip_moves_image_and_mask_together() -> None:
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :5] = 255
    mask = np.zeros((20, 20), np.float32)
    mask[:, :5] = 1
    transform = train_transform(20, None, hflip=1.0)
    img, m = transform(image, mask, seed=0)
    assert m[0, :, -5:].min() == 1 and m[0, :, :-5].max() == 0
    assert (img[0, :, -5:] > img[0, :, :-5].max()).all()


def test_crop_and_flips_are_drawn_independently() -> None:
    # A mask whose every pixel is its own position: the output's corners tell the crop offset and flips.
    ys, xs = np.mgrid[0:20, 0:20]
    mask = ((ys * 20 + xs) / 400).astype(np.float32)
    image = np.zeros((20, 20, 3), np.uint8)
    transform = train_transform(20, 16, hflip=0.5, vflip=0.5)
    seen = set()
    for seed in range(300):
        out = transform(image, mask, seed=seed)[1][0].numpy()
        corners = np.round(out[[0, 0, -1, -1], [0, -1, 0, -1]] * 400).astype(int)
        top, left = corners.min() // 20, corners.min() % 20  # the crop's top-left in the input
        hflipped, vflipped = out[0, 0] > out[0, -1], out[0, 0] > out[-1, 0]
        seen.add((bool(hflipped), bool(vflipped), bool(top < 2), bool(left < 2)))
    assert len(seen) == 16  # every combination of flips and crop half occurs


def test_sampler_resumes_exactly_and_reshuffles() -> None:
    full = ResumableBatchSampler(10, 3, seed=5)
    stream = iter(full)
    first = [next(stream) for _ in range(9)]  # 3 epochs of 3 batches
    resumed = iter(ResumableBatchSampler(10, 3, seed=5, start_step=4))
    assert [next(resumed) for _ in range(5)] == first[4:]
    epochs = [[i for batch in first[e * 3 : e * 3 + 3] for i, _ in batch] for e in range(3)]
    assert all(len(set(e)) == 9 for e in epochs)  # no repeats within an epoch
    assert epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="larger than the training set"):
        ResumableBatchSampler(2, 3)


def test_datamodule_on_synthetic(tiny_synthetic) -> None:
    sources = {
        "train": [
            {"name": "tr", "root": str(tiny_synthetic / "DUTS-TR"), "images": "DUTS-TR-Image", "masks": "DUTS-TR-Mask"}
        ],
    }
    data = SaliencyDataModule(**sources, val_fraction=0.25, batch_size=4, num_workers=0, image_size=64, crop_size=48)
    data.setup(seed=0)
    assert len(data.train_set) == 18 and len(data.val_set) == 6
    train_files = {p[0] for p in data.train_set.pairs}
    assert not train_files & {p[0] for p in data.val_set.pairs}
    batch = next(iter(data.train_loader(seed=0)))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["mask"].shape == (4, 1, 48, 48)
    val = next(iter(data.val_loader()))
    assert val["image"].shape == (4, 3, 64, 64)
    # the same step gives the same batch with or without worker processes
    with_workers = SaliencyDataModule(
        **sources, val_fraction=0.25, batch_size=4, num_workers=2, image_size=64, crop_size=48
    )
    with_workers.setup(seed=0)
    other = next(iter(with_workers.train_loader(seed=0)))
    assert torch.equal(batch["image"], other["image"]) and torch.equal(batch["index"], other["index"])
    # validation reuses one loader whose workers persist between validations
    loader = with_workers.val_loader()
    assert loader.persistent_workers and with_workers.val_loader() is loader
    first_pass = [b["index"].tolist() for b in loader]
    assert [b["index"].tolist() for b in with_workers.val_loader()] == first_pass
    assert with_workers.val_loader(rank=1, world_size=2) is not loader
