"""Our image operations (``u2net.data.imageops``) against the OpenCV calls they replace, and the removal path
without OpenCV: ``u2net remove``, ``u2net mine``, QA and the Python API run with ``cv2`` made unimportable, and
what still needs OpenCV says so on one line."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from u2net.data.imageops import (
    box_mean,
    closing,
    component_areas,
    dilate,
    ellipse,
    erode,
    label_components,
    opening,
    resize_linear,
    rgb_to_gray,
)
from u2net.data.preprocessing import resize_image
from u2net.errors import MissingExtraError
from u2net.inference.refine import clean_mask, guided_filter, upsample_probability

from .conftest import REPO, run_python_json

RNG_SEED = 20240607


def _cv2_shape(result: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return result.reshape(shape)  # OpenCV drops a channel axis of length 1


# -- bilinear resize ---------------------------------------------------------------------------------------------
def _resize_cases(count: int, largest: int) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    rng = np.random.default_rng(RNG_SEED)
    cases = [((1, 1), (5, 7)), ((5, 1, 3), (1, 9)), ((64, 48, 3), (32, 24)), ((7, 9), (7, 4)), ((3, 3), (3, 3))]
    for k in range(count):
        h, w, oh, ow = (int(v) for v in rng.integers(1, largest, 4))
        cases.append(((h, w, *[(), (1,), (3,), (4,)][k % 4]), (oh, ow)))
    return cases


@pytest.mark.parametrize("use_ipp", [True, False])
def test_uint8_bilinear_resize_is_opencvs_to_the_bit(use_ipp: bool) -> None:
    rng = np.random.default_rng(RNG_SEED)
    before = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(use_ipp)
    try:
        for shape, (h, w) in _resize_cases(400, 90) + [((480, 640, 3), (320, 320)), ((320, 320), (777, 999))]:
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            expected = _cv2_shape(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), (h, w, *shape[2:]))
            ours = resize_linear(image, (h, w))
            assert ours.dtype == np.uint8 and np.array_equal(ours, expected), (shape, (h, w))
    finally:
        cv2.ipp.setUseIPP(before)


def test_float_bilinear_resize_is_within_1e5_of_opencv() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for shape, (h, w) in _resize_cases(300, 90):  # sides < 100: within 1e-5 with or without IPP
        image = rng.random(shape, dtype=np.float32)
        expected = _cv2_shape(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), (h, w, *shape[2:]))
        ours = resize_linear(image, (h, w))
        assert ours.dtype == np.float32 and np.abs(ours - expected).max() <= 1e-5, (shape, (h, w))
    # what inference does: a smooth 320² probability map up to a photo's size
    yy, xx = np.mgrid[:320, :320]
    prob = (1 / (1 + np.exp(-(120 - np.hypot(yy - 150, xx - 170)) / 4))).astype(np.float32)
    expected = cv2.resize(prob, (1234, 821), interpolation=cv2.INTER_LINEAR)
    assert np.abs(resize_linear(prob, (821, 1234)) - expected).max() <= 1e-5


def test_resize_image_linear_is_opencvs_and_area_still_opencvs() -> None:
    photo = np.random.default_rng(RNG_SEED).integers(0, 256, (123, 187, 3), dtype=np.uint8)
    assert np.array_equal(resize_image(photo, 64, "linear"), cv2.resize(photo, (64, 64)))
    assert np.array_equal(resize_image(photo, 64, "area"), cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA))


def test_resize_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="cannot resize"):
        resize_linear(np.zeros((4, 4), np.uint8), (0, 3))
    with pytest.raises(TypeError, match="uint8 or float"):
        resize_linear(np.zeros((4, 4), np.int16), (2, 2))


# -- connected components ----------------------------------------------------------------------------------------
def _snake(h: int, w: int) -> np.ndarray:
    """One path through every other row, joined at alternate ends: a component as long as the image."""
    mask = np.zeros((h, w), np.uint8)
    mask[::2] = 1
    for i, row in enumerate(range(1, h - 1, 2)):
        mask[row, w - 1 if i % 2 == 0 else 0] = 1
    return mask


def _spiral(n: int) -> np.ndarray:
    """A 1-px square spiral with 1-px gaps, walked in from the corner (each step only where the cell after it is
    clear)."""
    mask = np.zeros((n, n), np.uint8)
    y, x, dy, dx, turns = 0, 0, 0, 1, 0
    mask[0, 0] = 1
    while turns < 2:
        ny, nx = y + dy, x + dx
        inside = 0 <= ny < n and 0 <= nx < n and not mask[ny, nx]
        beyond = 0 <= ny + dy < n and 0 <= nx + dx < n and mask[ny + dy, nx + dx]
        if inside and not beyond:
            y, x, turns = ny, nx, 0
            mask[y, x] = 1
        else:
            dy, dx, turns = dx, -dy, turns + 1
    return mask


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    masks = [np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8), np.zeros((17, 9), np.uint8)]
    masks += [np.ones((13, 70), np.uint8), np.ones((1, 130), np.uint8), np.ones((90, 1), np.uint8)]
    masks += [_snake(61, 37), _snake(64, 129), _spiral(75), _spiral(128).T.copy()]
    checker = (np.indices((40, 50)).sum(axis=0) % 2).astype(np.uint8)  # one component, by its diagonals
    dots = np.zeros((60, 90), np.uint8)
    dots[::2, ::2] = 1  # isolated pixels: 30 × 45 components
    masks += [checker, dots, 1 - dots]
    for k in range(40):
        h, w = (int(v) for v in rng.integers(1, 140, 2))
        masks.append((rng.random((h, w)) < [0.05, 0.3, 0.45, 0.6, 0.9][k % 5]).astype(np.uint8))
    blobs = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 16), dtype=np.uint8)).resize((160, 120)))
    masks += [(blobs > 150).astype(np.uint8), (blobs > 100).astype(np.uint8) * 255]
    return masks


def test_components_are_opencvs_up_to_their_numbering() -> None:
    for mask in _masks():
        count, expected, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        labels, areas = label_components(mask)
        assert labels.shape == mask.shape and labels.dtype == np.int32
        assert np.array_equal(labels == 0, expected == 0) and len(areas) == count - 1 == labels.max()
        # the same partition: each of our labels is one of OpenCV's, and the other way round
        pairs = np.unique(np.stack([labels.ravel(), expected.ravel()]), axis=1)
        assert len(set(pairs[0])) == len(set(pairs[1])) == pairs.shape[1]
        # numbered in raster order of their first pixel, with OpenCV's areas
        values, firsts = np.unique(labels.ravel(), return_index=True)
        firsts = firsts[values > 0]
        assert np.all(np.diff(firsts) > 0)
        assert np.array_equal(areas, stats[expected.ravel()[firsts], cv2.CC_STAT_AREA])
        assert np.array_equal(component_areas(mask), areas) and component_areas(mask).dtype == np.int64


# -- morphology --------------------------------------------------------------------------------------------------
def test_the_elliptical_element_is_opencvs() -> None:
    for size in range(1, 52):
        assert np.array_equal(ellipse(size), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))), size


def _morphology_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED + 1)
    masks = [np.zeros((5, 7), np.uint8), np.ones((5, 7), np.uint8), np.ones((1, 1), np.uint8), _spiral(33)]
    for h, w in ((1, 70), (70, 1), (29, 63), (31, 64), (23, 65), (40, 128), (37, 129), (61, 150)):
        masks.append((rng.random((h, w)) < rng.choice([0.03, 0.5, 0.97])).astype(np.uint8))
    return masks


def test_binary_morphology_is_opencvs_to_the_bit() -> None:
    elements = [ellipse(k) for k in range(1, 42)]
    elements += [np.ones((3, 3), np.uint8), np.ones((4, 2), np.uint8), np.eye(5, dtype=np.uint8), ellipse(6)[:, 1:]]
    operations = [
        (dilate, lambda m, e: cv2.dilate(m, e)),
        (erode, lambda m, e: cv2.erode(m, e)),
        (opening, lambda m, e: cv2.morphologyEx(m, cv2.MORPH_OPEN, e)),
        (closing, lambda m, e: cv2.morphologyEx(m, cv2.MORPH_CLOSE, e)),
    ]
    for mask in _morphology_masks():
        for element in elements:
            for ours, theirs in operations:
                result = ours(mask, element)
                assert result.dtype == bool and np.array_equal(result, theirs(mask, element) > 0), (
                    ours.__name__,
                    mask.shape,
                    element.shape,
                )


def test_post_processing_is_what_it_was_with_opencv() -> None:
    """``clean_mask`` against its OpenCV version (the code it replaced), kernel sizes and islands included."""

    def with_opencv(alpha: np.ndarray, kernel: int, min_island: float = 0.05) -> np.ndarray:
        element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
        binary = (alpha >= 128).astype(np.uint8)
        cleaned = cv2.morphologyEx(cv2.morphologyEx(binary, cv2.MORPH_OPEN, element), cv2.MORPH_CLOSE, element)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
        if count > 2:
            areas = stats[1:, cv2.CC_STAT_AREA]
            cleaned = np.concatenate([[False], areas >= min_island * areas.max()])[labels].astype(np.uint8)
        out = np.where(cv2.dilate(cleaned, element).astype(bool), alpha, 0).astype(np.uint8)
        out[(cleaned > 0) & (binary == 0)] = 255
        return out

    rng = np.random.default_rng(RNG_SEED)
    for k in range(12):
        small = rng.integers(0, 256, (int(rng.integers(3, 12)), int(rng.integers(3, 12))), dtype=np.uint8)
        alpha = np.asarray(Image.fromarray(small).resize((int(rng.integers(40, 200)), int(rng.integers(40, 200)))))
        kernel = [3, 5, 9, 15, 41][k % 5]
        assert np.array_equal(clean_mask(alpha, kernel), with_opencv(alpha, kernel))


# -- the guided filter's pieces ----------------------------------------------------------------------------------
def test_box_mean_is_opencvs_reflected_box_filter() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for h, w, radius in [(1, 1, 3), (2, 5, 4), (9, 1, 0), (40, 33, 1), (17, 64, 20), (120, 90, 7)]:
        x = rng.random((h, w), dtype=np.float32)
        size = 2 * radius + 1
        expected = cv2.boxFilter(x, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)
        ours = box_mean(x, radius)
        assert ours.dtype == np.float32 and np.abs(ours - expected).max() <= 1e-5, (h, w, radius)


def test_gray_is_opencvs() -> None:
    image = np.random.default_rng(RNG_SEED).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    assert np.array_equal(rgb_to_gray(image), cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    unit = image.astype(np.float32) / 255
    assert np.abs(rgb_to_gray(unit) - cv2.cvtColor(unit, cv2.COLOR_RGB2GRAY)).max() <= 1e-6


def test_guided_upsampling_is_what_it_was_with_opencv() -> None:
    def with_opencv(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
        size = 2 * radius + 1

        def mean(x: np.ndarray) -> np.ndarray:
            return cv2.boxFilter(x, -1, (size, size), normalize=True, borderType=cv2.BORDER_REFLECT)

        image = cv2.cvtColor(guide, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        mean_i, mean_p = mean(image), mean(src)
        a = (mean(image * src) - mean_i * mean_p) / (mean(image * image) - mean_i * mean_i + eps)
        return mean(a) * image + mean(mean_p - a * mean_i)

    rng = np.random.default_rng(RNG_SEED)
    photo = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)).resize((150, 120)))
    prob = np.asarray(Image.fromarray(rng.random((6, 8), dtype=np.float32)).resize((150, 120)), np.float32)
    assert np.abs(guided_filter(photo, prob, 3, 1e-3) - with_opencv(photo, prob, 3, 1e-3)).max() <= 1e-5
    assert upsample_probability(prob[::4, ::4].copy(), photo, "guided").shape == (120, 150)


# -- without OpenCV ----------------------------------------------------------------------------------------------
def test_what_needs_opencv_says_so_on_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if not installed (find_spec and import both say so)
    photo = np.zeros((20, 30, 3), np.uint8)
    for call in (
        lambda: resize_image(photo, 8, "area"),
        lambda: resize_image(photo, 8, "cubic"),
        lambda: upsample_probability(np.zeros((8, 8), np.float32), photo, "cubic"),
    ):
        with pytest.raises(MissingExtraError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and "opencv-python-headless" in message and "pip install 'u2net[opencv]'" in message
    resize_image(photo, 8, "linear")  # ours: no OpenCV needed


_WITHOUT_OPENCV = """
import json, sys
sys.modules["cv2"] = None  # as if OpenCV were not installed
from pathlib import Path
import numpy as np
from PIL import Image
from u2net.cli import main
from u2net.errors import MissingExtraError
from u2net.inference import BackgroundRemover, RemovalOptions, remove_batch
from u2net.inference.qa import assess_mask
from u2net.data.preprocessing import resize_image

work = Path(sys.argv[1])
photos = sorted((work / "photos").iterdir())
remover = BackgroundRemover.from_path("u2netp.duts")
rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
results = {}
for name, options in {
    "default": RemovalOptions(),
    "post_process": RemovalOptions(post_process=True),
    "crop": RemovalOptions(crop=True, padding=4),
    "bg_color": RemovalOptions(bg_color=(20, 200, 40)),
    "bg_image": RemovalOptions(bg_image=np.full((300, 400, 3), 90, np.uint8)),
    "weights_resize": RemovalOptions(input_resize=None, upsampling="linear", threshold=0.5),
}.items():
    image, alpha = remover.cutout(rgb, options)
    results[name] = [image.mode, list(image.size), assess_mask(alpha).header_value()]
report = remove_batch(remover, work / "photos", work / "batch", RemovalOptions(post_process=True), progress=False,
                      qa_csv=work / "batch.csv")
assert main(["remove", str(work / "photos"), str(work / "cli"), "--post-process", "--crop", "--qa-csv",
             str(work / "cli.csv"), "-q"]) == 0
assert main(["mine", str(work / "photos"), str(work / "mined"), "--top", "2", "-q"]) == 0
try:
    resize_image(rgb, 64, "area")
    results["area"] = "resized"
except MissingExtraError as exc:
    results["area"] = str(exc)
results["cv2"] = "cv2" in sys.modules and sys.modules["cv2"] is not None
results["training"] = sorted(m for m in ("albumentations", "u2net.metrics", "u2net.evaluation",
                                         "u2net.data.synthetic", "u2net.inference.soft_edges") if m in sys.modules)
print(json.dumps(results))
"""


@pytest.mark.subprocess
def test_removal_mining_and_qa_run_without_opencv(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(REPO / "tests" / "data" / "coffee.jpg").save(photos / "a_coffee.jpg")
    rng = np.random.default_rng(RNG_SEED)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / "b_noise.png")
    disc = np.zeros((48, 64, 3), np.uint8)
    disc[np.hypot(*np.mgrid[-24:24, -32:32]) < 15] = (230, 60, 40)
    Image.fromarray(disc).save(photos / "c_disc.png")
    results = run_python_json(_WITHOUT_OPENCV, str(tmp_path), cwd=REPO)
    assert results["cv2"] is False and results["training"] == []
    assert results["default"][:2] == ["RGBA", [240, 160]] and results["crop"][0] == "RGBA"
    assert results["bg_color"][0] == results["bg_image"][0] == "RGB"
    assert "\n" not in results["area"] and "pip install 'u2net[opencv]'" in results["area"]
    assert len(list((tmp_path / "batch").iterdir())) == 3 and len(list((tmp_path / "cli").iterdir())) == 3
    assert (tmp_path / "batch.csv").read_text().count("\n") == 4 and (tmp_path / "cli.csv").exists()
    assert len(list((tmp_path / "mined" / "masks").iterdir())) == 2
    assert (tmp_path / "mined" / "ranking.csv").exists()
