"""One door for images (the service's ``open_image`` is :func:`u2net.data.io.open_image` with its errors as HTTP
statuses) and one float -> uint8 conversion (:func:`u2net.data.io.unit_to_uint8`) behind every former copy."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from u2net.data import io as data_io
from u2net.data.io import ImageTooLargeError, unit_to_uint8
from u2net.evaluation import runner
from u2net.inference import remover
from u2net.metrics import probabilities_to_uint8

pytest.importorskip("fastapi")
from u2net.serve import images  # noqa: E402
from u2net.serve.errors import ApiError  # noqa: E402

from .helpers_serve import _png_header  # noqa: E402


def _png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _api_error(data: bytes, max_pixels: int = 1_000_000) -> ApiError:
    with pytest.raises(ApiError) as info:
        images.open_image(data, "up.png", max_pixels)
    return info.value


# -- one door -----------------------------------------------------------------------------------
def test_the_service_opens_through_data_io(monkeypatch) -> None:
    calls = []
    real = data_io.open_image

    def spy(source, max_pixels=data_io.MAX_PIXELS):
        calls.append(max_pixels)
        return real(source, max_pixels)

    monkeypatch.setattr(data_io, "open_image", spy)
    img = images.open_image(_png(8, 6), "up.png", 48)  # exactly at the limit
    assert calls == [48]
    assert img.size == (8, 6) and img.format == "PNG"


def test_our_pixel_limit_is_413_with_the_size() -> None:
    error = _api_error(_png_header(3000, 3000))
    assert error.status == 413
    assert error.message == "up.png: too many pixels: 3000×3000 = 9,000,000; the limit is 1,000,000"
    assert error.detail == {"filename": "up.png", "width": 3000, "height": 3000, "max_pixels": 1_000_000}
    # the same words as the library's own error, which now carries the size and the limit
    with pytest.raises(ImageTooLargeError) as info:
        data_io.open_image(io.BytesIO(_png_header(3000, 3000)), 1_000_000)
    assert (info.value.reason, info.value.size, info.value.max_pixels) == (
        "too many pixels: 3000×3000 = 9,000,000; the limit is 1,000,000",
        (3000, 3000),
        1_000_000,
    )
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.size, copy.max_pixels) == (str(info.value), (3000, 3000), 1_000_000)


def test_pillows_decompression_bomb_is_413_without_a_size() -> None:
    error = _api_error(_png_header(100_000, 100_000), max_pixels=10**12)
    assert error.status == 413
    assert error.message.startswith("up.png: too many pixels (") and "\n" not in error.message
    assert error.detail == {"filename": "up.png"}


@pytest.mark.parametrize(
    "data",
    [b"hello, I am text", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", b"%PDF-1.4\n"],
    ids=["text", "eps", "pdf"],
)
def test_not_an_allowed_image_is_415(data: bytes) -> None:
    error = _api_error(data)
    assert error.status == 415 and "not an image" in error.message
    assert error.detail == {"filename": "up.png"}


@pytest.mark.parametrize(
    "data",
    [_png()[:40], b"\xff\xd8\xff\xe0" + b"\0" * 20, b"RIFF\0\0\0\0WEBPVP8 "],
    ids=["png-cut-header", "jpeg-garbage", "webp-garbage"],
)
def test_an_allowed_signature_that_cannot_be_read_is_400(data: bytes) -> None:
    error = _api_error(data)
    assert error.status == 400 and error.message.startswith("up.png: corrupt image")


def test_empty_is_400() -> None:
    error = _api_error(b"")
    assert (error.status, error.message) == (400, "up.png: the file is empty")


# -- one float -> uint8 -------------------------------------------------------------------------
def test_one_conversion_behind_every_former_copy() -> None:
    assert runner.mask_to_uint8 is unit_to_uint8
    assert remover.unit_to_uint8 is unit_to_uint8
    assert not hasattr(remover, "_unit_to_u8")


def test_unit_to_uint8_rounds_half_to_even_and_clips() -> None:
    x = np.array([0.0, 1.0, 127.5 / 255, 76.5 / 255, 128.5 / 255, 0.2, -0.01, 1.01, -1e-7, 1 + 1e-7])
    assert unit_to_uint8(x).tolist() == [0, 255, 128, 76, 128, 51, 0, 255, 0, 255]
    assert unit_to_uint8(x).dtype == np.uint8
    # out of range saturates (the old mask_to_uint8 wrapped around: 1.01 -> 2, -0.01 -> 253)
    assert unit_to_uint8(np.array([[2.0, -3.0]], np.float32)).tolist() == [[255, 0]]


def test_the_result_does_not_depend_on_the_float_dtype() -> None:
    levels = np.arange(256) / 255.0
    for dtype in (np.float16, np.float32, np.float64):
        np.testing.assert_array_equal(unit_to_uint8(levels.astype(dtype)), np.arange(256, dtype=np.uint8))
    rng = np.random.default_rng(0)
    p32 = rng.random((64, 64)).astype(np.float32)  # computed in float64, not in the input's float32
    np.testing.assert_array_equal(unit_to_uint8(p32), np.round(p32.astype(np.float64) * 255).astype(np.uint8))


def test_probabilities_to_uint8_validates_then_converts_the_same_way() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((7, 9)).astype(np.float32)
    np.testing.assert_array_equal(probabilities_to_uint8(p), unit_to_uint8(p))
    np.testing.assert_array_equal(probabilities_to_uint8(torch.from_numpy(p)), unit_to_uint8(p))
    with pytest.raises(ValueError, match="sigmoid"):
        probabilities_to_uint8(np.array([1.5]))  # the metric refuses what unit_to_uint8 would clip
    assert unit_to_uint8(np.array([1.5])).tolist() == [255]
