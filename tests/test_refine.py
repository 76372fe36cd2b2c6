"""From the model's map to the photo's mask: resize methods, guided upsampling, the second pass, presets."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from PIL import Image, ImageFilter

from u2net.data.transforms import Preprocessing, resize_image
from u2net.inference import BackgroundRemover, Predictor, RemovalOptions
from u2net.inference.options import DEFAULT_QUALITY, QUALITY_PRESETS
from u2net.inference.predictor import resize_probability
from u2net.inference.refine import (
    guided_filter,
    paste_probability,
    pymatting_quiet,
    sharpen_probability,
    subject_box,
    upsample_probability,
)
from u2net.inference.remover import rembg_preprocess, unsure_fraction


def _step_photo(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A photo with a sharp vertical edge at x = 50 (dark left, bright right) and its true mask."""
    truth = np.zeros((h, w), np.float32)
    truth[:, 50:] = 1.0
    photo = np.repeat((30 + 190 * truth)[..., None], 3, axis=2).astype(np.uint8)
    return photo, truth


def bilinear_downsize(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``prob`` at ``size`` = (h, w), as the model's coarse view of it."""
    return np.asarray(Image.fromarray(prob).resize(size[::-1], Image.Resampling.BILINEAR), np.float32)


def test_guided_upsampling_snaps_a_blurred_map_to_the_photo_edge() -> None:
    photo, truth = _step_photo()
    low = bilinear_downsize(truth, (24, 32))  # the model's coarse view: the edge smeared over a few pixels
    linear = upsample_probability(low, photo, "linear")
    guided = upsample_probability(low, photo, "guided")
    assert guided.shape == truth.shape and guided.dtype == np.float32
    assert guided.min() >= 0.0 and guided.max() <= 1.0
    band = slice(44, 57)  # near the edge, where the bilinear map is soft
    assert np.abs(guided[:, band] - truth[:, band]).mean() < 0.8 * np.abs(linear[:, band] - truth[:, band]).mean()
    np.testing.assert_allclose(linear, resize_probability(low, truth.shape), atol=1e-6)


def test_lanczos_upsampling_is_rembgs_kernel_on_the_float_map_and_guided_keeps_sure_regions() -> None:
    photo, truth = _step_photo()
    low = bilinear_downsize(truth, (24, 32))
    expected = np.asarray(Image.fromarray(low, "F").resize((128, 96), Image.Resampling.LANCZOS)).clip(0, 1)
    np.testing.assert_allclose(upsample_probability(low, photo, "lanczos"), expected, atol=1e-6)
    guided = upsample_probability(low, photo, "guided")
    sure = (expected <= 0.0) | (expected >= 1.0)
    sure[:, 40:62] = False  # the band (grown by a pixel) may change; far from the edge nothing does
    np.testing.assert_array_equal(guided[sure], expected[sure])


def test_guided_filter_keeps_flat_maps_and_rejects_unknown_methods() -> None:
    photo, _ = _step_photo()
    flat = np.full(photo.shape[:2], 0.7, np.float32)
    np.testing.assert_allclose(guided_filter(photo, flat, radius=3, eps=1e-3), flat, atol=1e-5)
    with pytest.raises(ValueError, match="upsampling must be one of"):
        upsample_probability(flat, photo, "nearest")


def test_subject_box_grows_by_the_margin_within_the_map() -> None:
    prob = np.zeros((100, 200), np.float32)
    assert subject_box(prob) is None
    prob[40:60, 90:110] = 0.9
    assert subject_box(prob, margin=0.5) == (80, 30, 120, 70)
    prob[0:10, 0:10] = 0.9
    assert subject_box(prob, margin=0.5) == (0, 0, 165, 100)  # clamped to the map


def test_paste_blends_inside_and_leaves_the_rest() -> None:
    full = np.zeros((50, 60), np.float32)
    crop = np.ones((20, 30), np.float32)
    out = paste_probability(full, crop, (10, 10, 40, 30), feather=4)
    assert out[20, 25] == 1.0  # inside, beyond the feather
    assert 0.0 < out[10, 25] < 1.0  # the feathered edge
    assert out[5, 5] == 0.0 and full.max() == 0.0  # outside untouched, input not modified
    edge = paste_probability(full, crop, (0, 0, 30, 20), feather=4)
    assert edge[0, 0] == 1.0  # no seam where the box meets the photo's border


class CountingPredictor:
    """A "model" that finds the bright pixels of whatever it is shown, at a coarse 32² resolution."""

    def __init__(self) -> None:
        self.batches = 0

    def preprocess(self, rgb: np.ndarray, resize: str | None = None) -> np.ndarray:
        return resize_image(rgb, 32, resize or "area").transpose(2, 0, 1).astype(np.float32) / 255.0

    def predict_batch(self, batch: np.ndarray, sizes=None) -> list[np.ndarray]:
        self.batches += 1
        return [(x.mean(0) > 0.5).astype(np.float32) for x in batch]


class CountingBackend:
    fixed_size = None


def _photo_with_subject(side: int) -> np.ndarray:
    photo = np.full((256, 256, 3), 20, np.uint8)
    start = (256 - side) // 2
    photo[start : start + side, start : start + side] = 230  # centred
    return photo


@pytest.mark.parametrize(("side", "passes"), [(40, 2), (200, 1)])
def test_second_pass_runs_on_small_subjects_only(side: int, passes: int) -> None:
    predictor = CountingPredictor()
    remover = BackgroundRemover(predictor)
    options = RemovalOptions(second_pass=True, input_resize="area", stretch=False)
    remover.mask(_photo_with_subject(side), options)
    assert predictor.batches == passes


def test_second_pass_sharpens_a_small_subject() -> None:
    truth = _photo_with_subject(40)[..., 0] > 128
    errors = {}
    for second_pass in (False, True):
        options = RemovalOptions(second_pass=second_pass, input_resize="area", stretch=False)
        mask = BackgroundRemover(CountingPredictor()).mask(_photo_with_subject(40), options)
        errors[second_pass] = np.abs(mask / 255.0 - truth).mean()
    assert errors[True] < 0.5 * errors[False]


def test_lanczos_input_is_rembgs_resize() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(resize_image(rgb, 32, "lanczos"), expected)
    predictor = Predictor(CountingBackend(), Preprocessing(image_size=320))
    ours = BackgroundRemover(predictor).model_input(rgb, RemovalOptions(input_resize="lanczos"))
    np.testing.assert_allclose(ours, rembg_preprocess(rgb, 320), atol=1e-5)
    with pytest.raises(ValueError, match="resize method must be one of"):
        resize_image(rgb, 32, "nearest")


def test_presets_and_option_checks() -> None:
    for name in QUALITY_PRESETS:
        assert isinstance(RemovalOptions.preset(name), RemovalOptions)
    assert RemovalOptions.preset(DEFAULT_QUALITY) == RemovalOptions()  # one default, used everywhere
    assert RemovalOptions.preset("best", crop=True).crop
    with pytest.raises(ValueError, match="quality must be one of"):
        RemovalOptions.preset("ultra")
    with pytest.raises(ValueError, match="input_resize must be one of"):
        RemovalOptions(input_resize="box")
    with pytest.raises(ValueError, match="second_pass_area"):
        RemovalOptions(second_pass_area=0.0)


def test_decontamination_takes_the_background_out_of_soft_edges() -> None:
    pytest.importorskip("pymatting")
    from u2net.inference.refine import decontaminate_colors

    h, w = 60, 80
    alpha = np.zeros((h, w), np.float32)
    alpha[15:45, 20:60] = 1.0
    alpha = soft_edges(alpha)
    red, green = np.array([220.0, 20.0, 20.0]), np.array([20.0, 200.0, 20.0])
    photo = np.rint(alpha[..., None] * red + (1 - alpha[..., None]) * green).astype(np.uint8)
    alpha_u8 = np.rint(alpha * 255).astype(np.uint8)
    cleaned = decontaminate_colors(photo, alpha_u8)
    edge = (alpha_u8 > 25) & (alpha_u8 < 230)
    assert cleaned[edge, 1].mean() < 0.5 * photo[edge, 1].mean()  # the green bleed is mostly gone
    sure = (alpha_u8 == 0) | (alpha_u8 == 255)
    np.testing.assert_array_equal(cleaned[sure], photo[sure])


def soft_edges(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask with its edges blurred over a few pixels, in [0, 1]."""
    blurred = Image.fromarray(np.uint8(mask * 255)).filter(ImageFilter.GaussianBlur(3))
    return np.asarray(blurred, np.float32) / 255.0


def test_sharpening_keeps_the_half_way_point_and_narrows_the_soft_band() -> None:
    # an edge as upsampling leaves it: a logistic ramp across 201 px
    prob = (1.0 / (1.0 + np.exp(-np.linspace(-10.0, 10.0, 201)))).astype(np.float32)[None]
    sharp = sharpen_probability(prob, 2.0)
    assert sharp.dtype == np.float32 and sharp.shape == prob.shape
    assert sharp[0, 100] == pytest.approx(0.5)  # a mask thresholded at 0.5 is unchanged
    assert np.all(np.diff(sharp[0]) >= 0)  # the order of the pixels is kept (maxF's curves see the same ranks)
    soft = lambda p: int(((p > 0.1) & (p < 0.9)).sum())  # noqa: E731
    assert soft(sharp) <= soft(prob) // 2 + 1  # the uncertain band is half as wide
    assert sharp[0, 0] < prob[0, 0] and sharp[0, -1] > prob[0, -1]
    assert sharpen_probability(prob, 1.0) is prob
    with pytest.raises(ValueError, match="sharpen must be > 0"):
        RemovalOptions(sharpen=0.0)


class LeftBiasedPredictor(CountingPredictor):
    """Finds the bright pixels, but sees ``bias`` (0.4) too much in the left half of whatever it is shown: an
    error that is not mirror-symmetric, as a real network's are not."""

    bias = 0.4

    def predict_batch(self, batch: np.ndarray, sizes=None) -> list[np.ndarray]:
        self.batches += 1
        self.images = len(batch)
        maps = [(x.mean(0) > 0.5).astype(np.float32) for x in batch]
        for m in maps:
            m[:, : m.shape[1] // 2] += self.bias
        return maps


def test_two_views_run_the_mirror_image_in_the_same_batch_and_halve_an_asymmetric_error() -> None:
    photo = _photo_with_subject(100)
    truth = (photo[..., 0] > 128).astype(np.float32)
    errors = {}
    for views in (1, 2):
        predictor = LeftBiasedPredictor()
        options = RemovalOptions(
            views=views, unsure_share=0.0, sharpen=1.0, input_resize="area", upsampling="linear", stretch=False
        )
        mask = BackgroundRemover(predictor).mask(photo, options)
        assert (predictor.batches, predictor.images) == (1, views)
        errors[views] = np.abs(np.clip(mask / 255.0, 0, 1) - truth)[:, :100].mean()  # the biased left part
    assert errors[2] == pytest.approx(errors[1] / 2, rel=0.1)


class RecordingPredictor(CountingPredictor):
    """A "model" whose map is its input's brightness, with its left half seen 0.2 too bright (an error that is not
    mirror-symmetric); keeps what it was shown (each input's mean), batch by batch."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[float]] = []

    def predict_batch(self, batch: np.ndarray, sizes=None) -> list[np.ndarray]:
        self.seen.append([round(float(x.mean()), 4) for x in batch])
        maps = [np.clip(x.mean(0), 0.0, 1.0) for x in batch]
        for m in maps:
            m[:, : m.shape[1] // 2] = np.clip(m[:, : m.shape[1] // 2] + 0.2 * (m[:, : m.shape[1] // 2] > 0), 0, 1)
        return maps


def test_extra_views_run_only_for_the_inputs_whose_first_view_is_unsure() -> None:
    # Two photos in one batch: the model is sure of the plain one (a clean 0/1 map), unsure of the one with a
    # soft gradient in its left half (the map's values there fall strictly between 0.1 and 0.9).
    sure = np.zeros((3, 32, 32), np.float32)
    sure[:, 8:24, 8:24] = 1.0
    unsure = sure.copy()
    unsure[:, :, :16] += np.linspace(0.0, 0.5, 16, dtype=np.float32)  # a soft ramp where the background was
    predictor = RecordingPredictor()
    maps = BackgroundRemover(predictor).model_output(np.stack([sure, unsure]), RemovalOptions(unsure_share=0.03))
    # one run of both photos, then one of the unsure photo's mirror image alone
    assert [len(batch) for batch in predictor.seen] == [2, 1]
    assert predictor.seen[1] == [predictor.seen[0][1]]  # mirrored: the same mean as the unsure photo
    every = BackgroundRemover(RecordingPredictor()).model_output(
        np.stack([sure, unsure]), RemovalOptions(unsure_share=0.0)
    )
    np.testing.assert_array_equal(maps[1], every[1])  # the unsure photo: the two views' average, as without the rule
    assert not np.array_equal(maps[1], predictor.predict_batch(unsure[None])[0])  # (which differs from one view)
    np.testing.assert_array_equal(maps[0], predictor.predict_batch(sure[None])[0])  # the sure one: its own map
    assert unsure_fraction(maps[0]) == 0.0 < 0.03 <= unsure_fraction(predictor.predict_batch(unsure[None])[0])
    with pytest.raises(ValueError, match=r"unsure_share must be in \[0, 1\]"):
        RemovalOptions(unsure_share=1.5)


def test_four_views_map_the_shifted_views_back_onto_the_photo() -> None:
    # A model that finds the bright pixels wherever they are (mirror- and shift-equivariant): every view, mapped
    # back, agrees with the photo's own, so four views give the one-view mask; a shift undone the wrong way
    # would blur the subject's edges by twice the shift.
    photo = np.full((256, 256, 3), 20, np.uint8)
    photo[40:150, 70:200] = 230  # off-centre, so that mirroring moves it
    masks = {}
    for views in (1, 4):
        predictor = LeftBiasedPredictor()
        predictor.bias = 0.0
        options = RemovalOptions(views=views, unsure_share=0.0, input_resize="area", stretch=False)
        masks[views] = BackgroundRemover(predictor).mask(photo, options)
        assert (predictor.batches, predictor.images) == (1, views)
    np.testing.assert_array_equal(masks[4], masks[1])
    with pytest.raises(ValueError, match="views must be one of 1, 2, 4"):
        RemovalOptions(views=3)


def test_pymatting_quiet_restores_stdout_after_overlapping_threads(capsys) -> None:
    """Two threads inside ``pymatting_quiet`` at once: stdout stays silenced until the last one leaves, then it is
    the stream that was there before (not the other thread's silenced one)."""
    before = sys.stdout
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with pymatting_quiet:
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(5)
    with pymatting_quiet:
        print("dropped")
        leave.set()
        thread.join(5)
        print("dropped too")  # the other thread has left; this one is still inside
    assert sys.stdout is before
    print("kept")
    assert capsys.readouterr().out == "kept\n"
