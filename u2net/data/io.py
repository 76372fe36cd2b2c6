"""Reading images and masks in any common mode, with EXIF orientation applied."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # what the service accepts

# Decompression-bomb protection stays on, but allows large photos (~180 MP).
Image.MAX_IMAGE_PIXELS = 180_000_000

_EXIF_ORIENTATION = 0x0112


def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading the header only."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    sixteen_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2  # either byte order (I;16, I;16B)
    if sixteen_bit or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return (array.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return (array * scale).round().clip(0, 255).astype(np.uint8)
    return array.clip(0, 255).astype(np.uint8)


def to_rgb(img: Image.Image, exif: bool = True) -> np.ndarray:
    """A PIL image in any mode as H×W×3 uint8 RGB: L, LA, P, RGB(A), CMYK, 16-bit and float modes;
    with ``exif``, its EXIF orientation applied first. Transparency is dropped (the colour channels
    are kept as stored)."""
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB. Handles L, LA, P, RGB(A), CMYK, 16-bit and EXIF rotation;
    transparency is dropped (the colour channels are kept as stored)."""
    with Image.open(path) as img:
        return to_rgb(img)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as H×W float32 in [0, 1].

    Grayscale or RGB (the brightest channel counts, so coloured masks work), 0/255 or 0/1 coding,
    8- or 16-bit; soft values are kept. For masks with a non-trivial alpha channel (mattes saved as
    RGBA), the alpha is the mask.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode == "P":
            img = img.convert("RGBA")
        if img.mode in ("RGBA", "LA", "PA"):
            alpha = np.asarray(img.getchannel("A"))
            if alpha.min() < 255:
                return alpha.astype(np.float32) / 255.0
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        if img.mode == "1":
            return np.asarray(img, dtype=np.float32)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.float64)
            peak = array.max(initial=0)
            scale = 1.0 if peak <= 1 else (255.0 if peak <= 255 else 65535.0)
            return (array / scale).clip(0, 1).astype(np.float32)
        if img.mode == "F":
            array = np.asarray(img, dtype=np.float32)
            return (array / 255.0 if array.max(initial=0) > 1 else array).clip(0, 1)
        array = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    if array.ndim == 3:
        array = array.max(axis=2)
    # 0/1-coded masks (max value 1) are scaled up; 0/255 and soft masks are kept as they are.
    scale = 1.0 if array.max(initial=0) <= 1 else 255.0
    return array.astype(np.float32) / scale


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
