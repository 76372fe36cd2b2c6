"""Uploads: read within their size limit, identified from their header, checked against the pixel limits,
and only then decoded (every failure an :class:`~u2net.serve.errors.ApiError` naming the file)."""

from __future__ import annotations

import io
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from fastapi import UploadFile
from PIL import Image

from ..data import io as data_io
from ..data.io import ImageTooLargeError, UnsupportedImageError
from ..inference.options import RemovalOptions
from .errors import ApiError, mb, one_line
from .settings import ServeSettings

# Signatures of the allowed formats: a file starting with one that PIL cannot open is corrupt (400), not foreign (415).
SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


async def read_upload(upload: UploadFile, settings: ServeSettings) -> bytes:
    name = upload.filename or "upload"
    limit = settings.max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise too_large(name, upload.size, settings)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(name, len(data), settings)
    return data


def too_large(name: str, size: int, settings: ServeSettings) -> ApiError:
    return ApiError(
        413,
        f"{name}: the file is too large: {mb(size)}; the limit is {settings.max_upload_mb:g} MB",
        {"filename": name, "size_bytes": size, "limit_bytes": settings.max_upload_bytes},
    )


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """:func:`u2net.data.io.open_image` for an upload (header only, our decoders only, the pixel limit checked
    before anything is decoded), its errors as :class:`ApiError`: too many pixels 413, not an image 415, a damaged
    file of an allowed format 400."""
    if not data:
        raise ApiError(400, f"{name}: the file is empty", {"filename": name})
    try:
        img = data_io.open_image(io.BytesIO(data), max_pixels)
    except ImageTooLargeError as exc:
        detail: dict = {"filename": name}
        if exc.size is not None:  # ours; else Pillow's own decompression-bomb limit
            detail |= {"width": exc.size[0], "height": exc.size[1], "max_pixels": exc.max_pixels}
        raise ApiError(413, f"{name}: {one_line(exc.reason)}", detail) from None
    except UnsupportedImageError:
        if data.startswith(SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ApiError(400, f"{name}: corrupt image (unreadable header)", {"filename": name}) from None
        raise ApiError(
            415,
            f"{name}: not an image, or not a supported format (PNG, JPEG, WebP, BMP, TIFF, GIF)",
            {"filename": name},
        ) from None
    except Exception as exc:  # a damaged header
        raise ApiError(400, f"{name}: corrupt image ({one_line(exc)})", {"filename": name}) from None
    if img.width == 0 or img.height == 0:
        raise ApiError(400, f"{name}: corrupt image (zero size)", {"filename": name})
    return img


def open_upload(data: bytes, name: str, options: RemovalOptions, settings: ServeSettings) -> Image.Image:
    """:func:`open_image`, with the much lower pixel limit of alpha matting when it is asked for."""
    img = open_image(data, name, settings.max_pixels)
    width, height = img.size
    limit = settings.max_matting_pixels
    if options.alpha_matting and width * height > limit:
        raise ApiError(
            413,
            f"{name}: too many pixels for alpha_matting: {width}×{height} = {width * height:,}; the limit with "
            f"alpha_matting is {limit:,} (send a smaller image, or leave alpha_matting off)",
            {"filename": name, "width": width, "height": height, "max_matting_pixels": limit},
        )
    return img


def decode_image(img: Image.Image, name: str) -> Image.Image:
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: too many pixels ({one_line(exc)})", {"filename": name}) from None
    except Exception as exc:  # truncated or damaged data
        raise ApiError(400, f"{name}: corrupt or truncated image ({one_line(exc)})", {"filename": name}) from None
    return img


def safe_stem(filename: str | None, fallback: str = "image") -> str:
    """An ASCII file stem for a client-supplied name (any folders dropped)."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem[:100] or fallback


__all__ = ["decode_image", "open_image", "open_upload", "read_upload", "safe_stem", "too_large"]
