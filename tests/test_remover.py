"""Background removal: masks, cut-outs, crops, backgrounds, matting, clean-up, batches, and
agreement with rembg's own ``u2net_custom`` session on the same ONNX file."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

import u2net
from u2net.data.io import load_rgb, read_image
from u2net.fileio import write_image
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions, mask_bbox, parse_color, remove_batch
from u2net.inference.compositing import cover
from u2net.inference.refine import clean_mask

from .conftest import ASSETS, PLAIN, FakePredictor, _picture, _tree


def _fixed(prob: np.ndarray) -> BackgroundRemover:
    return BackgroundRemover(FakePredictor(lambda rgb: prob))


def _rect(h=30, w=40, box=(5, 16, 2, 11), value=1.0) -> np.ndarray:
    prob = np.zeros((h, w), np.float32)
    y0, y1, x0, x1 = box
    prob[y0:y1, x0:x1] = value
    return prob


# -- input modes and orientation ---------------------------------------------------------------
def _mode_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in ``mode`` and the RGB we expect to read from it."""
    h, w = 20, 30
    ramp = (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)
    rgb = np.dstack([ramp, 255 - ramp, ramp // 2])
    if mode == "L":
        return Image.fromarray(ramp, "L"), np.dstack([ramp] * 3)
    if mode == "LA":
        return Image.fromarray(np.dstack([ramp, 255 - ramp]), "LA"), np.dstack([ramp] * 3)
    if mode == "I;16":
        return Image.fromarray(ramp.astype(np.uint16) * 257), np.dstack([ramp] * 3)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, ramp]), "RGBA"), rgb
    if mode == "P":
        img = Image.fromarray(rgb, "RGB").quantize(16)
        return img, np.asarray(img.convert("RGB"))
    if mode == "CMYK":
        img = Image.fromarray(rgb, "RGB").convert("CMYK")
        return img, np.asarray(img.convert("RGB"))
    return Image.fromarray(rgb, "RGB"), rgb


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
def test_every_input_mode(tmp_path, mode) -> None:
    img, expected = _mode_image(mode)
    assert img.mode == mode
    path = tmp_path / ("img.tif" if mode == "CMYK" else "img.png")
    img.save(path)
    prob = _rect(20, 30, (2, 12, 3, 20))
    remover = _fixed(prob)
    for source in (path, img, np.asarray(img) if mode not in ("P", "CMYK") else expected):
        cutout = remover.remove(source)
        assert cutout.mode == "RGBA" and cutout.size == (30, 20)
        out = np.asarray(cutout)
        np.testing.assert_array_equal(out[..., :3], expected)
        alpha = np.rint(prob * 255)
        if mode in ("LA", "RGBA"):  # the input's own transparency is kept
            alpha = (alpha * np.asarray(img.getchannel("A")) + 127) // 255
        np.testing.assert_array_equal(out[..., 3], alpha)
    np.testing.assert_array_equal(load_rgb(path), read_image(path))
    np.testing.assert_array_equal(load_rgb(path.read_bytes()), expected)


def test_exif_rotated_jpeg(tmp_path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    fake = FakePredictor(lambda rgb: np.ones(rgb.shape[:2]))
    remover = BackgroundRemover(fake)
    for source in (path, Image.open(path)):
        out = remover.remove(source)
        assert out.size == (20, 40)  # (width, height) of the displayed image
        assert fake.seen[-1].shape == (40, 20, 3)
        assert fake.seen[-1][:10].mean() > 200 and fake.seen[-1][-10:].mean() < 50  # the white band is on top
    assert remover.mask(path).shape == (40, 20)


# -- outputs -----------------------------------------------------------------------------------
def test_cutout_alpha_is_the_mask_and_mask_only() -> None:
    image = _picture()
    prob = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))
    remover = _fixed(prob)
    expected = np.rint(prob * 255).astype(np.uint8)
    plain = RemovalOptions(**PLAIN)
    np.testing.assert_array_equal(remover.mask(image, plain), expected)
    cutout = np.asarray(remover.remove(image, plain))
    np.testing.assert_array_equal(cutout[..., 3], expected)
    np.testing.assert_array_equal(cutout[..., :3], image)  # straight (not premultiplied) colours
    np.testing.assert_array_equal(remover.remove(image).getchannel("A"), remover.mask(image))  # the default too
    only = remover.remove(image, RemovalOptions(mask_only=True, **PLAIN))
    assert only.mode == "L"
    np.testing.assert_array_equal(np.asarray(only), expected)


def test_stretch_uses_the_full_range_unless_turned_off() -> None:
    prob = np.tile(np.linspace(0.2, 0.7, 40, dtype=np.float32), (30, 1))  # an unconfident map
    remover = _fixed(prob)
    stretched = remover.mask(_picture())  # the default, as the original inference and rembg do
    assert stretched.min() == 0 and stretched.max() == 255
    plain = remover.mask(_picture(), RemovalOptions(**PLAIN))
    np.testing.assert_array_equal(plain, np.rint((prob - 0.2) / 0.5 * 255).astype(np.uint8))
    kept = remover.mask(_picture(), RemovalOptions(stretch=False, **PLAIN))
    np.testing.assert_array_equal(kept, np.rint(prob * 255).astype(np.uint8))
    # an empty prediction stays empty instead of becoming a mask of noise
    assert _fixed(np.zeros((30, 40), np.float32)).mask(_picture()).max() == 0


def test_threshold_binarises() -> None:
    prob = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))
    alpha = _fixed(prob).mask(_picture(), RemovalOptions(threshold=0.5))
    assert set(np.unique(alpha)) == {0, 255}
    np.testing.assert_array_equal(alpha == 255, prob >= 0.5)


def test_bbox_crop_and_padding_clamp() -> None:
    prob = _rect(30, 40, (5, 16, 2, 11))  # rows 5..15, columns 2..10
    remover = _fixed(prob)
    alpha = remover.mask(_picture())
    assert mask_bbox(alpha) == (2, 5, 11, 16)
    assert mask_bbox(alpha, padding=5) == (0, 0, 16, 21)  # clamped on the left and at the top
    assert mask_bbox(alpha, padding=100) == (0, 0, 40, 30)
    assert mask_bbox(np.zeros((5, 5), np.uint8)) is None
    image = _picture()
    cropped = remover.remove(image, RemovalOptions(crop=True, padding=5))
    assert cropped.size == (16, 21)
    np.testing.assert_array_equal(np.asarray(cropped)[..., :3], image[0:21, 0:16])
    tight = remover.remove(image, RemovalOptions(crop=True, padding=0, mask_only=True))
    assert tight.size == (9, 11) and np.asarray(tight).min() == 255
    empty = _fixed(np.zeros((30, 40))).remove(image, RemovalOptions(crop=True))
    assert empty.size == (40, 30)  # nothing to crop to: the image is kept whole


def test_crop_ignores_faint_background_noise() -> None:
    # The min–max stretch turns a model's faint background (here 0.4–0.8 %) into alpha 1–2 everywhere.
    prob = _rect(30, 40, (5, 16, 2, 11), value=0.9) + np.random.default_rng(1).uniform(0.004, 0.008, (30, 40))
    remover = _fixed(prob.astype(np.float32))
    assert remover.remove(_picture(), RemovalOptions(crop=True, padding=0, **PLAIN)).size == (9, 11)
    everything = RemovalOptions(crop=True, padding=0, crop_threshold=1, **PLAIN)
    assert remover.remove(_picture(), everything).size == (40, 30)
    # the default's sharpening takes that faint noise to 0 by itself
    assert remover.remove(_picture(), RemovalOptions(crop=True, padding=0, crop_threshold=1)).size == (9, 11)
    with pytest.raises(ValueError, match="crop_threshold must be in"):
        RemovalOptions(crop_threshold=0)


def test_transparent_input_stays_transparent(tmp_path) -> None:
    remover = _fixed(np.ones((30, 40), np.float32))  # the model sees everything as subject
    rgba = np.dstack([_picture(), np.full((30, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0  # the left quarter was cut away already
    rgba[:, 10:20, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "cut.png")
    for source in (tmp_path / "cut.png", (tmp_path / "cut.png").read_bytes(), Image.fromarray(rgba), rgba):
        alpha = np.asarray(remover.remove(source))[..., 3]
        assert alpha[:, :10].max() == 0 and (alpha[:, 10:20] == 128).all() and alpha[:, 20:].min() == 255
        on_white = np.asarray(remover.remove(source, RemovalOptions(bg_color="white")))
        assert (on_white[:, :10] == 255).all()  # the background shows where the input was transparent
    # the mask is the model's, as with rembg's only_mask
    assert np.asarray(remover.remove(rgba, RemovalOptions(mask_only=True))).min() == 255


def test_background_colour_and_image(tmp_path) -> None:
    image = np.full((30, 40, 3), 200, np.uint8)
    prob = np.zeros((30, 40), np.float32)
    prob[:, 20:] = 1.0
    prob[:, 10:20] = 128 / 255
    remover = _fixed(prob)
    green = remover.remove(image, RemovalOptions(bg_color=parse_color("#00ff00"), **PLAIN))
    assert green.mode == "RGB"
    out = np.asarray(green).astype(int)
    assert (out[:, :10] == [0, 255, 0]).all() and (out[:, 20:] == 200).all()
    np.testing.assert_array_equal(
        out[0, 15], np.rint([200 * 128 / 255, 200 * 128 / 255 + 255 * 127 / 255, 200 * 128 / 255])
    )
    translucent = np.asarray(remover.remove(image, RemovalOptions(bg_color=(0, 0, 255, 0), **PLAIN)))
    assert translucent.shape == (30, 40, 4)
    np.testing.assert_array_equal(translucent[..., 3], np.rint(prob * 255))  # a transparent colour: the cut-out

    Image.new("RGB", (100, 50), (10, 20, 30)).save(tmp_path / "bg.jpg", quality=100)
    placed = remover.remove(image, RemovalOptions(bg_image=tmp_path / "bg.jpg", crop=True, padding=0, **PLAIN))
    assert placed.mode == "RGB" and placed.size == (30, 30)  # cropped to columns 10..39
    out = np.asarray(placed).astype(int)
    assert np.abs(out[:, 10:] - 200).max() == 0
    np.testing.assert_allclose(out[0, 0], np.rint(200 * 128 / 255 + np.array([10, 20, 30]) * 127 / 255), atol=2)
    assert RemovalOptions(bg_color="white").bg_color == (255, 255, 255)
    with pytest.raises(ValueError, match="not both"):
        RemovalOptions(bg_color=(1, 2, 3), bg_image="x.png")


def test_cover_keeps_the_aspect_ratio() -> None:
    ramp = np.tile(np.arange(20, dtype=np.uint8)[None, :, None] * 10, (10, 1, 3))  # 10 high, 20 wide
    out = cover(ramp, (20, 20))
    assert out.shape == (20, 20, 3)
    # scaled 2× to 20×40 and centre-cropped: the middle half of the ramp
    assert 40 <= out[0, 0, 0] <= 60 and 130 <= out[0, -1, 0] <= 150


@pytest.mark.parametrize(
    ("text", "color"),
    [
        ("#ff8000", (255, 128, 0)),
        ("#FF800080", (255, 128, 0, 128)),
        ("10, 20,30", (10, 20, 30)),
        ("10,20,30,40", (10, 20, 30, 40)),
        ("white", (255, 255, 255)),
        ("Black", (0, 0, 0)),
        ("transparent", (0, 0, 0, 0)),
    ],
)
def test_parse_color(text, color) -> None:
    assert parse_color(text) == color


@pytest.mark.parametrize("text", ["#12", "1,2", "1,2,300", "nocolour", "a,b,c"])
def test_parse_color_rejects(text) -> None:
    with pytest.raises(ValueError, match="invalid colour"):
        parse_color(text)


def test_post_process_removes_a_small_island() -> None:
    prob = _rect(60, 60, (10, 40, 10, 40))
    prob[50:53, 50:53] = 1.0  # a 3×3 speck
    prob[5:7, 45:58] = 0.9  # a thin sliver
    remover = _fixed(prob)
    plain = remover.mask(_picture(60, 60))
    cleaned = remover.mask(_picture(60, 60), RemovalOptions(post_process=True))
    assert plain[51, 51] == 255 and cleaned[50:53, 50:53].max() == 0
    assert cleaned[5:7, 45:58].max() == 0
    np.testing.assert_array_equal(cleaned[:45, :45], plain[:45, :45])  # the subject itself is untouched
    # islands above the size limit stay
    two = _rect(60, 60, (5, 25, 5, 25)) + _rect(60, 60, (40, 50, 40, 50))
    np.testing.assert_array_equal(clean_mask(np.rint(two * 255).astype(np.uint8), kernel=3, min_island=0.2), two * 255)
    # a pin-hole in the subject is closed
    holed = np.rint(prob * 255).astype(np.uint8)
    holed[25, 25] = 0
    assert clean_mask(holed, kernel=5)[25, 25] == 255


def test_alpha_matting_respects_the_trimap() -> None:
    pytest.importorskip("pymatting")
    h, w = 48, 64
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = (20, 40, 220)
    image[12:36, 16:48] = (240, 40, 30)  # a red subject on blue
    prob = np.zeros((h, w), np.float32)
    prob[8:40, 12:52] = 0.5  # the model is unsure around the subject
    prob[16:32, 20:44] = 1.0
    remover = _fixed(prob)
    options = RemovalOptions(alpha_matting=True, erode_size=3)
    cutout = np.asarray(remover.remove(image, options))
    alpha = cutout[..., 3]
    assert alpha.dtype == np.uint8 and alpha.min() == 0 and alpha.max() == 255
    assert (alpha[18:30, 22:42] == 255).all()  # sure foreground (eroded)
    assert (alpha[:6] == 0).all() and (alpha[:, :10] == 0).all()  # sure background
    # the unknown band is resolved by colour: red is foreground, blue background
    assert alpha[13, 30] > 200 and alpha[9, 30] < 50
    np.testing.assert_array_equal(remover.mask(image, options), alpha)
    # nothing sure in the trimap: the mask is kept, with a warning
    with pytest.warns(UserWarning, match="alpha matting skipped"):
        kept = _fixed(np.full((h, w), 0.5)).mask(image, options)
    assert (kept == 128).all()


def test_alpha_matting_without_pymatting(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pymatting", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[matting\]'"):
        _fixed(_rect()).remove(_picture(), RemovalOptions(alpha_matting=True))


# -- batches -----------------------------------------------------------------------------------


GOOD = {"a.png": (40, 30), "sub/b.png": (32, 24), "sub/deeper/c.png": (20, 20)}


def test_batch_mirrors_the_tree_and_reports_failures(tmp_path, remover) -> None:
    _tree(tmp_path / "in")
    report = remove_batch(remover, tmp_path / "in", tmp_path / "out", RemovalOptions(), progress=False)
    assert (report.done, report.skipped, report.failed) == (3, 0, 2)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == sorted(GOOD)  # no temp files left, nothing for the broken inputs
    for name, size in GOOD.items():
        with Image.open(tmp_path / "out" / name) as img:
            assert img.format == "PNG" and img.mode == "RGBA" and img.size == size
    reasons = {p.name: reason for p, reason in report.failures}
    assert set(reasons) == {"notes.png", "truncated.jpg"}
    assert reasons["notes.png"].startswith("not a JPEG, PNG")  # by content, not by name
    assert "truncated" in reasons["truncated.jpg"]
    assert report.summary() == "5 image(s): 3 written, 0 skipped, 2 failed"

    before = (tmp_path / "out" / "a.png").stat().st_mtime_ns
    again = remove_batch(remover, tmp_path / "in", tmp_path / "out", RemovalOptions(mask_only=True), progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 3, 2)
    assert (tmp_path / "out" / "a.png").stat().st_mtime_ns == before
    forced = remove_batch(
        remover, tmp_path / "in", tmp_path / "out", RemovalOptions(mask_only=True), overwrite=True, progress=False
    )
    assert (forced.done, forced.skipped, forced.failed) == (3, 0, 2)
    assert Image.open(tmp_path / "out" / "a.png").mode == "L"


def test_outputs_with_names_near_the_length_limit_are_written(tmp_path) -> None:
    # 251 bytes, and 80 three-byte characters (244 bytes): they fit, but not with a temporary suffix added
    for out in (tmp_path / ("n" * 247 + ".png"), tmp_path / ("写" * 80 + ".png")):
        write_image(out, np.zeros((4, 4), np.uint8))
        assert Image.open(out).size == (4, 4)
    assert len(list(tmp_path.iterdir())) == 2  # no temporary files left


# -- agreement with rembg --------------------------------------------------------------------------
def _scene(w: int, h: int) -> Image.Image:
    """A textured background with a bright rounded subject."""
    from PIL import ImageDraw, ImageFilter

    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([60 + 40 * np.sin(xx / 17), 90 + 30 * np.cos(yy / 11), 120 + 20 * np.sin((xx + yy) / 25)], -1)
    background += np.random.default_rng(0).normal(0, 12, background.shape)
    img = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([w * 0.3, h * 0.2, w * 0.7, h * 0.7], fill=(230, 200, 170))
    draw.rectangle([w * 0.42, h * 0.6, w * 0.58, h * 0.95], fill=(200, 60, 60))
    return img.filter(ImageFilter.GaussianBlur(1))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript ONNX exporter
def test_same_mask_as_rembg(tmp_path, monkeypatch) -> None:
    """rembg's ``u2net_custom`` session and our remover on one exported file, with a trained model
    (U²-Net† from the default ``python train.py``, tests/assets/u2netp_synthetic.pt): photos at
    1024×768 and synthetic scenes at their own sizes, none of them seen in training."""
    pytest.importorskip("rembg")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # rembg only loads custom models from its home
    from rembg import new_session, remove

    from u2net.data import generate_synthetic_dataset
    from u2net.export.onnx import export_onnx

    model = u2net.load_model(ASSETS / "u2netp_synthetic.pt")
    onnx_path = export_onnx(model, tmp_path / "models" / "trained.onnx", input_size=320)
    session = new_session("u2net_custom", model_path=str(onnx_path))
    ours = BackgroundRemover(Predictor.from_path(onnx_path))

    scenes = generate_synthetic_dataset(tmp_path / "scenes", 1, 4, seed=123, min_size=200, max_size=400, progress=False)
    images = [Image.open(f).convert("RGB") for f in sorted((scenes / "DUTS-TE" / "DUTS-TE-Image").iterdir())]
    images += [_scene(1024, 768)] + [img.resize((1024, 768), Image.Resampling.LANCZOS) for img in images[:2]]
    default_diffs = []
    for image in images:
        theirs = np.asarray(remove(image, session=session, only_mask=True)).astype(np.int16)
        assert theirs.shape == image.size[::-1] and theirs.std() > 20  # a real mask, not a constant
        compatible = ours.mask(image, RemovalOptions(rembg_compatible=True)).astype(np.int16)
        assert np.abs(compatible - theirs).mean() <= 0.5  # bit-exact on CPU
        # One view without sharpening (Lanczos down and up on the float map, min–max stretch, rounding)
        # differs from rembg's (Lanczos, min–max, truncation to 8 bits, Lanczos) by a few levels at the
        # edges of the mask.
        default = ours.mask(image, RemovalOptions(**PLAIN)).astype(np.int16)
        default_diffs.append(np.abs(default - theirs).mean())
        assert np.abs(default - theirs).mean() <= 4.0
    assert np.mean(default_diffs) <= 2.0  # the 2/255 on average
