"""What a cut-out becomes: the mask applied to the photo (RGBA), cropped, or put on a colour or an image.

:func:`compose_output` makes the output of ``BackgroundRemover.remove`` from the final alpha and colours.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.imageops import resize_linear
from ..data.io import load_rgb
from .options import RemovalOptions, check_color
from .refine import mask_bbox

__all__ = ["compose_output", "composite", "composite_color", "cover"]


def compose_output(
    source_alpha: np.ndarray | None, alpha: np.ndarray, foreground: np.ndarray, options: RemovalOptions
) -> Image.Image:
    """The output of ``BackgroundRemover.remove`` from the image's own alpha (``source_alpha``, H×W uint8;
    ``None`` if it has none), the final ``alpha`` (H×W uint8) and ``foreground`` colours (H×W×3 uint8):
    RGBA, the mask (``mask_only``), or a composite on ``bg_color`` / ``bg_image``; cropped with ``crop``."""
    if source_alpha is not None and not options.mask_only:
        # What was transparent in the input stays so in the cut-out (as with rembg's composite).
        alpha = ((alpha.astype(np.uint16) * source_alpha + 127) // 255).astype(np.uint8)
    if options.crop:
        box = mask_bbox(alpha, options.padding, options.crop_threshold)
        if box is not None:
            x0, y0, x1, y1 = box
            alpha, foreground = alpha[y0:y1, x0:x1], foreground[y0:y1, x0:x1]
    if options.mask_only:
        return Image.fromarray(np.ascontiguousarray(alpha))
    if options.bg_color is not None:
        return composite_color(foreground, alpha, options.bg_color)
    if options.bg_image is not None:
        background = cover(load_rgb(options.bg_image), alpha.shape)
        return Image.fromarray(composite(foreground, alpha, background))
    cutout = Image.fromarray(foreground)
    cutout.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))  # 6× faster than stacking arrays
    return cutout


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``foreground`` over an opaque ``background`` (both H×W×3 uint8, or a colour) with ``alpha``."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = foreground.astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def composite_color(foreground: np.ndarray, alpha: np.ndarray, color: tuple[int, ...]) -> Image.Image:
    """``foreground`` over a plain colour: RGB for an opaque colour, else RGBA ("over" operator)."""
    color = check_color(color)
    if len(color) == 3 or color[3] == 255:
        return Image.fromarray(composite(foreground, alpha, color[:3]))
    a = alpha.astype(np.float32)[..., None] / 255.0
    ca = color[3] / 255.0
    out_a = a + ca * (1.0 - a)
    premultiplied = foreground.astype(np.float32) * a + np.asarray(color[:3], np.float32) * ca * (1.0 - a)
    rgb = np.divide(premultiplied, out_a, out=np.zeros_like(premultiplied), where=out_a > 0)
    rgba = np.dstack([rgb, out_a * 255.0])
    return Image.fromarray(np.rint(rgba).clip(0, 255).astype(np.uint8))


def cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled (keeping its aspect ratio) to cover ``size`` = (h, w), centre-cropped to it: shrunk with
    Pillow's Hamming filter (anti-aliased), enlarged bilinearly."""
    h, w = size[:2]
    ih, iw = image.shape[:2]
    scale = max(h / ih, w / iw)
    sh, sw = max(h, round(ih * scale)), max(w, round(iw * scale))
    if (sh, sw) == (ih, iw):
        scaled = image
    elif scale < 1:
        # Pillow, not OpenCV (base installs have none): this only scales a background picture, so no exact match
        # is kept. Hamming is the closest of Pillow's anti-aliased filters to OpenCV's INTER_AREA used before
        # (on photos under a level on average)
        scaled = np.asarray(Image.fromarray(image).resize((sw, sh), Image.Resampling.HAMMING))
    else:
        scaled = resize_linear(image, (sh, sw))
    y0, x0 = (sh - h) // 2, (sw - w) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + h, x0 : x0 + w])
