"""Reading images and masks in any common mode, with EXIF orientation applied.

Every file is opened by :func:`open_image`: only the decoders of :data:`IMAGE_FORMATS` (those of
:data:`IMAGE_EXTENSIONS`) ever see its bytes, whatever its name, and its pixel count is checked
against a per-call limit from the header, before anything is decoded. Pillow's own, process-wide
``Image.MAX_IMAGE_PIXELS`` is left as the application has it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import one_line, reason

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # what the service accepts


def _formats_of(extensions: tuple[str, ...]) -> tuple[str, ...]:
    # Pillow's format names, in order; an extension this Pillow lacks is left out (WebP needs libwebp).
    registered = Image.registered_extensions()
    return tuple(dict.fromkeys(registered[ext] for ext in extensions if ext in registered))


IMAGE_FORMATS = _formats_of(IMAGE_EXTENSIONS)  # the only decoders any file reaches: JPEG, PNG, BMP, WEBP, TIFF, GIF

# Large photos (~180 MP) are fine; beyond that a file is refused from its header. Pillow's own check still
# applies on top: it refuses above 2 × Image.MAX_IMAGE_PIXELS (~179 MP by default) and warns above it.
MAX_PIXELS = 180_000_000

# In palette masks (VOC-style label maps) this index marks the unlabelled border: read as background.
VOID_INDEX = 255

_EXIF_ORIENTATION = 0x0112


class ImageReadError(ValueError):
    """A file refused before or while decoding. ``str()`` is one line naming the file; ``reason`` is
    the same without the name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason

    def __reduce__(self):  # picklable (DataLoader workers send errors to the main process)
        return type(self), (self.name, self.reason)


def read_problem(exc: BaseException) -> str:
    """Why reading a file failed, on one line, for a report that names the file already: an
    :class:`ImageReadError`'s reason (its message starts with the name), else ``Type: message``."""
    return one_line(exc.reason) if isinstance(exc, ImageReadError) else reason(exc)


class UnsupportedImageError(ImageReadError):
    """Not one of :data:`IMAGE_FORMATS` (by content, not by name), or a header too damaged to tell."""


class ImageTooLargeError(ImageReadError):
    """More pixels than the limit, found from the header. ``size`` is (width, height) and ``max_pixels`` the
    limit when it was ours; both ``None`` when Pillow's own decompression-bomb check refused the file."""

    def __init__(
        self, name: str, reason: str, size: tuple[int, int] | None = None, max_pixels: int | None = None
    ) -> None:
        super().__init__(name, reason)
        self.size, self.max_pixels = size, max_pixels

    def __reduce__(self):
        return type(self), (self.name, self.reason, self.size, self.max_pixels)


def _source_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and name else "image data"


def open_image(source: str | os.PathLike | IO[bytes], max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header only), by content, as one of :data:`IMAGE_FORMATS`.

    Raises :class:`UnsupportedImageError` for any other format (an EPS named ``photo.png`` never
    reaches the EPS decoder) and :class:`ImageTooLargeError` beyond ``max_pixels`` (``None``: no limit
    of ours) or Pillow's own limit. Use it as a context manager, like ``Image.open``.
    """
    name = _source_name(source)
    try:
        img = Image.open(source, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            name, f"not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image (another format, or damaged)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"too many pixels ({exc})") from None
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageTooLargeError(
            name,
            f"too many pixels: {width}×{height} = {width * height:,}; the limit is {max_pixels:,}",
            (width, height),
            max_pixels,
        )
    return img


def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) after EXIF orientation, reading the header only."""
    with open_image(path) as img:
        width, height = img.size
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    # A NaN would reach the loss as NaN and look like a learning-rate problem; uint8 conversion hides it.
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ImageReadError(name, "holds NaN or infinite values")
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values as uint8: 16-bit integers divided by 257, floats in [0, 1] times 255, the rest clipped."""
    if array.dtype == np.uint8:
        return array
    sixteen_bit = array.dtype.kind == "u" and array.dtype.itemsize == 2  # either byte order (I;16, I;16B)
    if sixteen_bit or (np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255):
        return (array.astype(np.float64) / 257.0).round().clip(0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return (array * scale).round().clip(0, 255).astype(np.uint8)
    return array.clip(0, 255).astype(np.uint8)


def unit_to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (a mask, an alpha matte, probabilities, colours) as uint8, the way they would be saved:
    ``round(x * 255)`` computed in float64 (the result does not depend on the input's float dtype), halves to
    even, values outside [0, 1] clipped first (never wrapped around). The one such conversion in the package."""
    return np.rint(np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb(img: Image.Image, exif: bool = True) -> np.ndarray:
    """A PIL image in any mode as H×W×3 uint8 RGB: L, LA, P, RGB(A), CMYK, 16-bit and float modes;
    with ``exif``, its EXIF orientation applied first. Transparency is dropped (the colour channels
    are kept as stored). Float data with NaN or infinities raises :class:`ImageReadError`."""
    name = getattr(img, "filename", "") or "image"
    if exif:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = to_uint8(_finite(np.asarray(img), name))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB. Handles L, LA, P, RGB(A), CMYK, 16-bit and EXIF rotation;
    transparency is dropped (the colour channels are kept as stored). See :func:`open_image` for the
    formats and size accepted."""
    with open_image(path) as img:
        return to_rgb(img)


def _unit_from_8bit(array: np.ndarray) -> np.ndarray:
    # 0/1-coded masks (max value 1) are scaled up; 0/255 and soft masks are kept as they are.
    scale = 1.0 if array.max(initial=0) <= 1 else 255.0
    return array.astype(np.float32) / scale


def _palette_mask(img: Image.Image) -> np.ndarray:
    """A P (or PA) mask: by its alpha where that is not all opaque (a matte); by gray value where every
    palette entry used is gray (a grayscale mask stored with a palette, as PNG optimisers write them);
    else by index (a label map, e.g. VOC: index > 0 is the object, :data:`VOID_INDEX` background)."""
    if img.mode == "PA" or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha.astype(np.float32) / 255.0
    index = np.asarray(img.getchannel(0) if img.mode == "PA" else img)
    palette = np.zeros((256, 3), np.uint8)
    entries = np.asarray(img.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
    palette[: len(entries)] = entries
    used = palette[np.unique(index)]
    if (used == used[:, :1]).all():
        return _unit_from_8bit(palette[index, 0])
    return ((index > 0) & (index != VOID_INDEX)).astype(np.float32)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as H×W float32 in [0, 1].

    Grayscale or RGB (the brightest channel counts, so coloured masks work), 0/255 or 0/1 coding,
    8- or 16-bit; soft values are kept. For masks with a non-trivial alpha channel (mattes saved as
    RGBA), the alpha is the mask. Palette masks are read by index unless their palette is gray (see
    :func:`_palette_mask`). Float masks with NaN or infinities raise :class:`ImageReadError`.
    """
    with open_image(path) as img:
        name = _source_name(path)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("P", "PA"):
            return _palette_mask(img)
        if img.mode in ("RGBA", "LA"):
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
            array = _finite(np.asarray(img, dtype=np.float32), name)
            return (array / 255.0 if array.max(initial=0) > 1 else array).clip(0, 1)
        array = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
    if array.ndim == 3:
        array = array.max(axis=2)
    return _unit_from_8bit(array)


def list_images(
    folder: str | os.PathLike,
    recursive: bool = False,
    skipped: list[tuple[Path, str]] | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    follow_links: bool = False,
) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive: ``extensions``), sorted.

    Symbolic links to files are followed; broken links cannot be. Links to folders are not followed (no
    loops, nothing outside the tree) unless ``follow_links`` (with ``recursive``): then each folder is listed
    once, by its real identity (device and inode), under the first path that reaches it, real folders before
    links; a link back to a folder above it (a loop) or to one listed already is left out. With a ``skipped``
    list, what was left out is appended to it as (path, reason): broken links with an image extension (with
    ``follow_links``: any broken link or link loop), links to folders not followed and sub-folders that
    cannot be listed (when ``recursive``).
    """
    found: list[Path] = []
    left_out: list[tuple[Path, str]] = []
    top = Path(folder)
    pending = [top]
    links: list[Path] = []  # links to folders (follow_links): followed once every real folder is listed
    listed: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) of each folder listed -> the path it was listed as
    while pending or links:
        if not pending:
            link = links.pop(0)
            try:
                info = link.stat()
            except OSError as exc:  # gone, or its target is, since it was seen
                left_out.append((link, f"symbolic link that cannot be followed ({type(exc).__name__})"))
                continue
            first = listed.get((info.st_dev, info.st_ino))
            if first is not None:
                loop = first in link.parents
                why = f"leads back to {first}, a folder above it" if loop else f"leads to {first}, listed already"
                left_out.append((link, f"symbolic link loop ({why})" if loop else f"symbolic link that {why}"))
                continue
            pending.append(link)
        current = pending.pop()
        try:
            info = current.stat()
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)  # links followed in a fixed order
        except (FileNotFoundError, NotADirectoryError):
            if current != top:  # gone while we were listing; a missing top folder simply holds no images
                left_out.append((current, "disappeared while listing"))
            continue
        except OSError as exc:
            left_out.append((current, f"cannot list this folder ({type(exc).__name__})"))
            continue
        listed.setdefault((info.st_dev, info.st_ino), current)
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir, is_file, is_link = entry.is_dir(), entry.is_file(), entry.is_symlink()
            except OSError:  # e.g. a link loop: nothing to follow
                is_dir, is_file, is_link = False, False, True
            if is_dir:
                if not recursive:
                    continue
                if not is_link:
                    pending.append(path)
                elif follow_links:
                    links.append(path)
                else:
                    left_out.append((path, "symbolic link to a folder (not followed)"))
            elif path.suffix.lower() in extensions:
                if is_file:
                    found.append(path)
                elif is_link:
                    left_out.append((path, "broken symbolic link"))
            elif is_link and not is_file and recursive and follow_links:  # might have led to a folder
                left_out.append((path, "broken symbolic link, or a link loop"))
    if skipped is not None:
        skipped.extend(sorted(left_out))
    return sorted(found)


# Anything the remover takes as a photo: a path, encoded bytes, a PIL image or an array.
ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray


def load_rgb_alpha(image: ImageInput) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`load_rgb`, plus the input's own alpha channel (H×W uint8) where it has a non-opaque one."""
    if isinstance(image, (str, os.PathLike, bytes)):
        with open_image(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            return load_rgb_alpha(img)
    alpha = None
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            alpha = np.asarray(image.getchannel("A"))
        rgb = to_rgb(image, exif=False)
    else:
        rgb = load_rgb(image)
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] in (2, 4):
            alpha = to_uint8(image[..., -1])
    if alpha is not None and alpha.min() == 255:
        alpha = None
    return rgb, alpha


def load_rgb(image: ImageInput) -> np.ndarray:
    """Any supported input as H×W×3 uint8 RGB, EXIF orientation applied.

    A path or encoded bytes are decoded; a PIL image in any mode (L, LA, P, RGB(A), CMYK, I;16, F) is
    converted like :func:`u2net.data.io.read_image`; an array is taken as RGB(A) or grayscale
    (H×W, H×W×1, H×W×2, H×W×3, H×W×4; uint8, 16-bit or float). Transparency is dropped.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, bytes):
        with open_image(io.BytesIO(image)) as img:
            return to_rgb(img)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        array = image[..., 0] if image.ndim == 3 and image.shape[2] in (1, 2) else image  # gray (+ alpha)
        if array.ndim == 2:
            return np.repeat(to_uint8(array)[..., None], 3, axis=2)
        if array.ndim == 3 and array.shape[2] in (3, 4):
            return np.ascontiguousarray(to_uint8(array[..., :3]))
        raise ValueError(f"expected an H×W, H×W×1..4 array, got shape {image.shape}")
    raise TypeError(f"cannot read an image from {type(image).__name__}")
