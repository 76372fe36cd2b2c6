"""Background removal with a U²-Net predictor: masks, RGBA cut-outs, crops, new backgrounds, batches.

    remover = BackgroundRemover.from_path("u2net.duts")          # or a checkpoint, .pth, .onnx
    cutout = remover.remove("photo.jpg")                          # PIL RGBA, alpha = the mask
    white = remover.remove("photo.jpg", RemovalOptions(bg_color=(255, 255, 255), crop=True))
    report = remove_batch(remover, "photos/", "cutouts/")        # a folder, recursively

The mask is the model's probability map from the predictor (the training/validation preprocessing:
cv2 bilinear resize, divide by the image's maximum, ImageNet mean/std), resized to the image bilinearly,
min–max normalised as the original U²-Net inference (``normPRED``) and rembg do, and rounded to
0–255. That agrees with rembg's ``u2net_custom`` session on the same ONNX file to about 1.5/255 on
average; ``RemovalOptions(rembg_compatible=True)`` reproduces rembg bit for bit (CPU): PIL Lanczos
resize of the input to 320², min–max normalisation, truncation to uint8, Lanczos resize of the 8-bit
mask. ``stretch=False`` keeps the model's probabilities instead of stretching them to the full
range: an image without a subject then stays transparent rather than becoming a "mask" of noise.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageColor, ImageOps

from ..data.io import (
    ImageReadError,
    list_images,
    open_image,
    read_image,
    read_problem,
    to_rgb,
    to_uint8,
    unit_to_uint8,
)
from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, RESIZE_METHODS, resize_image
from ..errors import reason
from ..fileio import atomic_write, csv_cell, folder_write_problem
from .batch import DEFAULT_WORKERS, OUTPUT_FORMATS, OutputFormat, default_batch_size, format_of_suffix, run_pipeline
from .qa import MaskQuality, assess_mask
from .refine import (
    UPSAMPLING,
    Box,
    mask_bbox,
    paste_probability,
    sharpen_probability,
    subject_box,
    upsample_probability,
)

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

REMBG_INPUT_SIZE = 320  # rembg feeds every U²-Net session 320×320


@dataclass
class RemovalOptions:
    """What :meth:`BackgroundRemover.remove` makes of an image.

    - ``mask_only``: return the final alpha mask (an ``L`` image; after ``threshold``,
      ``post_process`` and ``alpha_matting``) instead of a cut-out.
    - ``crop`` / ``padding`` / ``crop_threshold``: crop every output to the subject's bounding box
      (pixels with alpha ≥ ``crop_threshold``, default 32 of 255: faint background noise, which the
      min–max stretch turns into alpha 1–2 anywhere, does not widen it), grown by ``padding`` px on each
      side and clamped to the image; an empty mask leaves the image uncropped.
    - ``threshold``: binarise the mask at this probability (0–1): alpha 255 where p ≥ threshold, else 0.
    - ``alpha_matting``: refine the edges with closed-form matting (pymatting, ``pip install -e
      '.[matting]'``): a trimap is built from the mask (sure foreground where alpha >
      ``fg_threshold``, sure background where alpha < ``bg_threshold``, both eroded by an
      ``erode_size``² square, as rembg's ``alpha_matting_cutout``), then ``estimate_alpha_cf`` gives the
      alpha and ``estimate_foreground_ml`` the colours of the cut-out. Slow on large images.
    - ``post_process``: clean the mask morphologically: binarise at 128, open then close with an
      elliptical kernel (``morph_kernel`` px; ``None``: 1 % of the shorter side, at least 3, odd) and
      drop connected components smaller than ``min_island`` × the largest one. The soft alpha is kept
      within the cleaned region grown by the kernel; holes the closing filled become opaque.
    - ``bg_color``: an RGB or RGBA colour (or a string for :func:`parse_color`) to put behind the
      subject (RGB output; RGBA output if the colour is not opaque). ``bg_image``: an image (path,
      PIL image or array) scaled to cover the output and centre-cropped, put behind the subject (RGB
      output). At most one of the two.
    - ``stretch``: min–max normalise the model's map to the full 0–1 range first (the original
      inference and rembg do; ``threshold`` then applies to the stretched map). ``False``: the
      probabilities as they are.
    - ``rembg_compatible``: compute the mask exactly as rembg's ``u2net_custom`` session does, with
      its preprocessing and post-processing (see the module docstring).
    - ``decontaminate``: estimate the subject's own colours in the semi-transparent edge (pymatting's
      ``estimate_foreground_ml``, as rembg's ``-dc`` does after matting), so that the old background does
      not tint the cut-out's edges on a new one; alpha matting does this already.
    - ``input_resize``: how the photo is resized to the model's input (:data:`RESIZE_METHODS`: ``lanczos``
      is Pillow's anti-aliased Lanczos, as rembg does; the default); ``None``: the weights' own preprocessing
      (OpenCV bilinear for every published U²-Net: what training validates with).
    - ``upsampling``: how the model's map is brought to the photo's size (:data:`UPSAMPLING`: ``linear``,
      ``cubic``, ``lanczos`` (the default: rembg's kernel on the float map, without its 8-bit truncation),
      or ``guided``: Lanczos, then the uncertain edges snapped to the photo's with a guided filter).
    - ``second_pass``: when the subject covers less than ``second_pass_area`` of the photo, run the
      model again on the subject's crop (with a margin) and paste that sharper map back.
    - ``views``: how many views of the photo the model sees, their maps averaged (test-time augmentation; each
      costs one model run): 1, the photo; 2, also its mirror image; 4, also both shifted by
      :data:`VIEW_SHIFT` of the input's side (8 px at 320², a quarter of the network's coarsest cell). The
      network's errors are neither mirror- nor shift-symmetric, so the average is more often right.
    - ``sharpen``: after the stretch, map each probability through ``sigmoid(sharpen · logit(p))``
      (:func:`~u2net.inference.refine.sharpen_probability`): 0.5 stays, the soft band upsampling leaves
      around the edges narrows ``sharpen``-fold (1: unchanged).
      ``rembg_compatible`` ignores both: rembg makes one run and does not sharpen.
    - ``soft_edges``: replace the mask's uncertain band by a closed-form alpha matte on a trimap made from the
      model's own uncertainty (:func:`~u2net.inference.soft_edges.soft_alpha`; pymatting): hair, fur and
      plants get soft, photo-following edges, and the edge colours are decontaminated. It costs hard-edged
      subjects some boundary accuracy (docs/quality.md); ``threshold`` and ``alpha_matting`` replace it.
    See :data:`QUALITY_PRESETS` (``--quality fast|balanced|best|soft``) for measured combinations.
    """

    mask_only: bool = False
    crop: bool = False
    padding: int = 10
    crop_threshold: int = 32
    threshold: float | None = None
    alpha_matting: bool = False
    fg_threshold: int = 240
    bg_threshold: int = 15
    erode_size: int = 15
    post_process: bool = False
    morph_kernel: int | None = None
    min_island: float = 0.05
    bg_color: tuple[int, ...] | str | None = None
    bg_image: str | os.PathLike | Image.Image | np.ndarray | None = None
    stretch: bool = True
    rembg_compatible: bool = False
    decontaminate: bool = False
    input_resize: str | None = "lanczos"
    upsampling: str = "lanczos"
    second_pass: bool = False
    second_pass_area: float = 0.5
    soft_edges: bool = False
    views: int = 2
    sharpen: float = 1.5

    def __post_init__(self) -> None:
        if self.bg_color is not None and self.bg_image is not None:
            raise ValueError("give bg_color or bg_image, not both")
        if isinstance(self.bg_color, str):
            self.bg_color = parse_color(self.bg_color)
        elif self.bg_color is not None:
            self.bg_color = _check_color(self.bg_color)
        if self.padding < 0:
            raise ValueError(f"padding must be >= 0, got {self.padding}")
        if not 1 <= self.crop_threshold <= 255:
            raise ValueError(f"crop_threshold must be in [1, 255], got {self.crop_threshold}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a probability in [0, 1], got {self.threshold}")
        for name in ("fg_threshold", "bg_threshold"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} must be in [0, 255], got {getattr(self, name)}")
        if self.erode_size < 0:
            raise ValueError(f"erode_size must be >= 0, got {self.erode_size}")
        if not 0.0 <= self.min_island <= 1.0:
            raise ValueError(f"min_island is a fraction of the largest component in [0, 1], got {self.min_island}")
        if self.input_resize is not None and self.input_resize not in RESIZE_METHODS:
            raise ValueError(f"input_resize must be one of {', '.join(RESIZE_METHODS)}, got {self.input_resize!r}")
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {', '.join(UPSAMPLING)}, got {self.upsampling!r}")
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {', '.join(map(str, VIEWS))}, got {self.views!r}")
        if not self.sharpen > 0.0:
            raise ValueError(f"sharpen is a gain on the logits, > 0 (1: unchanged), got {self.sharpen}")
        if not 0.0 < self.second_pass_area <= 1.0:
            raise ValueError(f"second_pass_area is a fraction of the photo in (0, 1], got {self.second_pass_area}")

    @classmethod
    def preset(cls, quality: str, **changes) -> RemovalOptions:
        """The options of a :data:`QUALITY_PRESETS` entry, with ``changes`` on top."""
        if quality not in QUALITY_PRESETS:
            raise ValueError(f"quality must be one of {', '.join(QUALITY_PRESETS)}, got {quality!r}")
        return cls(**{**QUALITY_PRESETS[quality], **changes})


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


VIEWS = (1, 2, 4)  # RemovalOptions.views: the photo; and its mirror image; and both shifted by VIEW_SHIFT
VIEW_SHIFT = 1 / 40  # of the model input's side: 8 px at 320², a quarter of U²-Net's coarsest (32 px) cell

# What each --quality means, as changes to RemovalOptions' defaults (the default preset has none), measured by
# benchmarks/quality.py on ecssd_dev and duts_te_dev; the sharpening gain was picked on duts_tr2k
# (docs/quality.md).
QUALITY_PRESETS: dict[str, dict[str, object]] = {
    # one model run, Lanczos down and up on the float map: rembg's cost, its scores (MAE lower, the rest level)
    "fast": {"views": 1, "sharpen": 1.0},
    # the defaults: Lanczos down and up, the photo and its mirror image averaged, edges sharpened 1.5-fold
    "balanced": {},
    # four views (also shifted); the guided filter and the second pass measured worse (docs/quality.md)
    "best": {"views": 4},
    # best, then the uncertain band matted (hair, fur, plants): lower matting errors on real alpha mattes, higher
    # MAE and lower boundary IoU on hard-edged subjects than best (docs/quality.md, benchmarks/soft_edges.py)
    "soft": {"views": 4, "soft_edges": True},
}
DEFAULT_QUALITY = "balanced"


class BackgroundRemover:
    """Removes backgrounds with a :class:`~u2net.inference.Predictor` (or anything with its ``preprocess``
    and ``predict_batch``). A cut-out is three steps, which a batch job can spread over threads:
    :meth:`model_input` (per image), the predictor's ``predict_batch`` (a batch of them), then
    :meth:`alpha_from_output` and :meth:`output_image` (per image)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "auto", **kwargs) -> BackgroundRemover:
        """A remover for a checkpoint, official ``.pth``, pretrained tag or ``.onnx`` file."""
        from .predictor import Predictor

        return cls(Predictor.from_path(path, device, **kwargs))

    # -- masks ---------------------------------------------------------------------------------
    def probabilities(self, image: ImageInput) -> np.ndarray:
        """H×W float32 foreground probabilities at the image's size (bilinear resize)."""
        return self.predictor.predict(load_rgb(image))

    def mask(self, image: ImageInput, options: RemovalOptions | None = None) -> np.ndarray:
        """The H×W uint8 alpha mask (0–255) at the image's size, with ``threshold``,
        ``post_process`` and ``alpha_matting`` of ``options`` applied."""
        return self._alpha(load_rgb(image), options or RemovalOptions())[0]

    def _alpha(self, rgb: np.ndarray, options: RemovalOptions) -> tuple[np.ndarray, np.ndarray]:
        """(final alpha, foreground colours) of ``rgb``: one model run (of all its views), then
        :meth:`alpha_from_output`."""
        raw = self.model_output(self.model_input(rgb, options)[None], options)[0]
        return self.alpha_from_output(rgb, raw, options)

    def model_input(self, rgb: np.ndarray, options: RemovalOptions) -> np.ndarray:
        """The model's input for an H×W×3 uint8 image: 3×S×S float32 (stack several for a batch)."""
        if options.rembg_compatible:
            size = getattr(getattr(self.predictor, "backend", None), "fixed_size", None) or REMBG_INPUT_SIZE
            return rembg_preprocess(rgb, size)
        return self.predictor.preprocess(rgb, resize=options.input_resize)

    def model_output(self, batch: np.ndarray, options: RemovalOptions) -> list[np.ndarray]:
        """The model's S×S probability maps for a batch of :meth:`model_input` arrays (N×3×S×S): the predictor's
        ``predict_batch``, averaged over ``options.views`` views of each input (one run of views × N)."""
        if options.views == 1 or options.rembg_compatible:
            return self.predictor.predict_batch(batch)
        n, side = len(batch), batch.shape[-1]
        shift = max(1, round(VIEW_SHIFT * side))
        inputs = [batch, batch[..., ::-1]]
        if options.views == 4:
            # content moved right and down by `shift`, the uncovered edge repeated
            shifted = np.pad(batch, ((0, 0), (0, 0), (shift, 0), (shift, 0)), mode="edge")[..., :-shift, :-shift]
            inputs += [shifted, shifted[..., ::-1]]
        maps = self.predictor.predict_batch(np.concatenate(inputs))
        averaged = []
        for i in range(n):
            plain, mirrored = maps[i], maps[n + i][:, ::-1]
            views = [plain, mirrored]
            if options.views == 4:  # moved back; the last `shift` rows and columns no view shifted covers
                for unshifted, m in ((plain, maps[2 * n + i]), (mirrored, maps[3 * n + i][:, ::-1])):
                    back = unshifted.copy()
                    back[:-shift, :-shift] = m[shift:, shift:]
                    views.append(back)
            averaged.append(np.mean(views, axis=0, dtype=np.float32))
        return averaged

    def alpha_from_output(
        self, rgb: np.ndarray, raw: np.ndarray, options: RemovalOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final alpha H×W uint8, foreground colours H×W×3 uint8) from the model's S×S probabilities
        ``raw`` for ``rgb`` (the matted colours with ``alpha_matting``, else the image)."""
        alpha = self._mask_from_output(rgb, raw, options)
        if options.soft_edges and options.threshold is None and not options.alpha_matting:
            from .soft_edges import soft_alpha  # pymatting: imported (seconds) only by those who ask for it

            alpha = unit_to_uint8(soft_alpha(rgb, alpha / np.float32(255.0)))
            return alpha, (rgb if options.mask_only else decontaminate_colors(rgb, alpha))
        if options.alpha_matting:
            alpha, matted = alpha_matting(rgb, alpha, options.fg_threshold, options.bg_threshold, options.erode_size)
            return alpha, (matted if matted is not None else rgb)
        if options.decontaminate and not options.mask_only:
            return alpha, decontaminate_colors(rgb, alpha)
        return alpha, rgb

    def _mask_from_output(self, rgb: np.ndarray, raw: np.ndarray, options: RemovalOptions) -> np.ndarray:
        h, w = rgb.shape[:2]
        if options.rembg_compatible:
            alpha = rembg_mask(raw, (h, w))
            if options.threshold is not None:
                alpha = np.where(alpha >= options.threshold * 255.0, 255, 0).astype(np.uint8)
        else:
            prob = upsample_probability(raw, rgb, options.upsampling)
            if options.second_pass:
                prob = self._second_pass(rgb, prob, options)
            prob = stretch_range(prob) if options.stretch else prob
            prob = sharpen_probability(prob, options.sharpen)
            if options.threshold is not None:
                alpha = np.where(prob >= options.threshold, 255, 0).astype(np.uint8)
            else:
                alpha = np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        if options.post_process:
            alpha = clean_mask(alpha, options.morph_kernel, options.min_island)
        return alpha

    def _second_pass(self, rgb: np.ndarray, prob: np.ndarray, options: RemovalOptions) -> np.ndarray:
        """``prob`` with the model's map of the subject's crop pasted in, when the subject is small."""
        box = subject_box(prob)
        if box is None:
            return prob
        x0, y0, x1, y1 = box
        if (x1 - x0) * (y1 - y0) >= options.second_pass_area * prob.size:
            return prob
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        raw = self.model_output(self.model_input(crop, options)[None], options)[0]
        crop_prob = upsample_probability(raw, crop, options.upsampling)
        return paste_probability(prob, crop_prob, box, feather=max(1, min(x1 - x0, y1 - y0) // 20))

    # -- outputs -------------------------------------------------------------------------------
    def remove(self, image: ImageInput, options: RemovalOptions | None = None) -> Image.Image:
        """The cut-out as a PIL image: RGBA (alpha = mask) by default; the mask (``L``) with
        ``mask_only``; RGB (or RGBA for a translucent colour) composited on ``bg_color`` /
        ``bg_image``; cropped to the subject with ``crop``."""
        return self.cutout(image, options)[0]

    def cutout(self, image: ImageInput, options: RemovalOptions | None = None) -> tuple[Image.Image, np.ndarray]:
        """(:meth:`remove`'s output, the H×W uint8 alpha mask it was made with, before any crop): the mask
        is what :func:`~u2net.inference.qa.assess_mask` judges."""
        options = options or RemovalOptions()
        rgb, source_alpha = load_rgb_alpha(image)
        alpha, foreground = self._alpha(rgb, options)
        return self.output_image(source_alpha, alpha, foreground, options), alpha

    @staticmethod
    def output_image(
        source_alpha: np.ndarray | None, alpha: np.ndarray, foreground: np.ndarray, options: RemovalOptions
    ) -> Image.Image:
        """The output of :meth:`remove` from the image's own alpha (``source_alpha``, ``None`` if it has
        none) and the final ``alpha`` and ``foreground`` colours of :meth:`alpha_from_output`."""
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

    @staticmethod
    def bbox(mask: np.ndarray | Image.Image, padding: int = 0, min_alpha: int = 1) -> Box | None:
        """See :func:`mask_bbox`."""
        return mask_bbox(mask, padding, min_alpha)


# -- mask post-processing ----------------------------------------------------------------------
def stretch_range(prob: np.ndarray) -> np.ndarray:
    """Min–max normalise a probability map to [0, 1] (the original U²-Net's ``normPRED``); a
    constant map is returned as it is."""
    lo, hi = float(prob.min()), float(prob.max())
    return (prob - lo) / (hi - lo) if hi - lo > 1e-6 else prob


def rembg_preprocess(rgb: np.ndarray, size: int = REMBG_INPUT_SIZE) -> np.ndarray:
    """rembg's ``BaseSession.normalize``: PIL Lanczos resize to ``size``², divide by the image's
    maximum, ImageNet mean/std, in float64 as rembg; 3×S×S float32."""
    resized = resize_image(rgb, size, "lanczos").astype(np.float64)
    resized = resized / max(float(resized.max()), 1e-6)
    normalised = (resized - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def rembg_mask(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """rembg's ``u2net_custom`` mask from a model's S×S output: min–max normalised, truncated to
    uint8, Lanczos-resized (PIL) to ``size`` = (h, w)."""
    lo, hi = float(raw.min()), float(raw.max())
    pred = (raw - lo) / (hi - lo) if hi > lo else np.zeros_like(raw)
    mask = Image.fromarray((pred * 255).astype(np.uint8))
    return np.asarray(mask.resize((size[1], size[0]), Image.Resampling.LANCZOS))


def clean_mask(alpha: np.ndarray, kernel: int | None = None, min_island: float = 0.05) -> np.ndarray:
    """Morphological clean-up of a uint8 mask (see ``RemovalOptions.post_process``)."""
    h, w = alpha.shape
    if kernel is None:
        kernel = max(3, round(min(h, w) / 100))
    kernel = max(1, int(kernel)) | 1  # odd
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    binary = (alpha >= 128).astype(np.uint8)
    cleaned = cv2.morphologyEx(cv2.morphologyEx(binary, cv2.MORPH_OPEN, element), cv2.MORPH_CLOSE, element)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(cleaned, connectivity=8)
    if count > 2:  # background plus more than one component
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.concatenate([[False], areas >= min_island * areas.max()])
        cleaned = keep[labels].astype(np.uint8)
    region = cv2.dilate(cleaned, element).astype(bool)
    out = np.where(region, alpha, 0).astype(np.uint8)
    out[(cleaned > 0) & (binary == 0)] = 255
    return out


def alpha_matting(
    rgb: np.ndarray, alpha: np.ndarray, fg_threshold: int = 240, bg_threshold: int = 15, erode_size: int = 15
) -> tuple[np.ndarray, np.ndarray | None]:
    """Closed-form alpha matting on a trimap made from ``alpha`` like rembg's ``alpha_matting_cutout``.

    Returns (uint8 alpha, uint8 estimated foreground colours). A trimap without sure foreground or
    background (nothing to anchor the matte) gives the mask back unchanged, with ``None`` colours and
    a warning.
    """
    try:
        from pymatting import estimate_alpha_cf, estimate_foreground_ml
        from scipy.ndimage import binary_erosion
    except ImportError:
        raise ImportError("alpha matting needs pymatting: pip install -e '.[matting]' in the repository") from None

    is_fg = alpha > fg_threshold
    is_bg = alpha < bg_threshold
    structure = np.ones((erode_size, erode_size), np.uint8) if erode_size > 0 else None
    is_fg = binary_erosion(is_fg, structure=structure)
    is_bg = binary_erosion(is_bg, structure=structure, border_value=1)
    if not is_fg.any() or not is_bg.any():
        warnings.warn("alpha matting skipped: the trimap has no sure foreground or no sure background", stacklevel=3)
        return alpha, None
    trimap = np.full(alpha.shape, 0.5)
    trimap[is_fg] = 1.0
    trimap[is_bg] = 0.0
    image = rgb / 255.0
    matte = trimap if (is_fg | is_bg).all() else estimate_alpha_cf(image, trimap)
    foreground = estimate_foreground_ml(image, matte)
    return unit_to_uint8(matte), unit_to_uint8(foreground)


def decontaminate_colors(rgb: np.ndarray, alpha: np.ndarray, margin: int = 8) -> np.ndarray:
    """The photo's colours with the background's bleed taken out of the semi-transparent edge: there
    each pixel is a mix ``alpha · F + (1 - alpha) · B``, and the foreground colour ``F`` is estimated with
    pymatting's multi-level ``estimate_foreground_ml``. Pixels with alpha 0 or 255 keep their colour; only
    the bounding box of the edge band (grown by ``margin``) is solved, so large photos stay fast."""
    try:
        from pymatting import estimate_foreground_ml
    except ImportError:
        raise ImportError("--decontaminate needs pymatting: pip install -e '.[matting]' in the repository") from None
    band = (alpha > 0) & (alpha < 255)
    box = mask_bbox(band.astype(np.uint8), padding=margin)
    if box is None:
        return rgb
    x0, y0, x1, y1 = box
    foreground = estimate_foreground_ml(rgb[y0:y1, x0:x1] / 255.0, alpha[y0:y1, x0:x1] / 255.0)
    out = rgb.copy()
    region, edge = out[y0:y1, x0:x1], band[y0:y1, x0:x1]
    region[edge] = unit_to_uint8(foreground)[edge]
    return out


# -- compositing -------------------------------------------------------------------------------
def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``foreground`` over an opaque ``background`` (both H×W×3 uint8, or a colour) with ``alpha``."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = foreground.astype(np.float32) * a + np.asarray(background, np.float32) * (1.0 - a)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def composite_color(foreground: np.ndarray, alpha: np.ndarray, color: tuple[int, ...]) -> Image.Image:
    """``foreground`` over a plain colour: RGB for an opaque colour, else RGBA ("over" operator)."""
    color = _check_color(color)
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
    """``image`` scaled (keeping its aspect ratio) to cover ``size`` = (h, w), centre-cropped to it."""
    h, w = size[:2]
    ih, iw = image.shape[:2]
    scale = max(h / ih, w / iw)
    sh, sw = max(h, round(ih * scale)), max(w, round(iw * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(image, (sw, sh), interpolation=interpolation) if (sh, sw) != (ih, iw) else image
    y0, x0 = (sh - h) // 2, (sw - w) // 2
    return np.ascontiguousarray(scaled[y0 : y0 + h, x0 : x0 + w])


_COLOR_NAMES_HINT = "#RRGGBB, #RRGGBBAA, r,g,b[,a] or a name such as white, black, red"


def parse_color(text: str) -> tuple[int, ...]:
    """A colour from ``#RRGGBB``, ``#RRGGBBAA``, ``#RGB``, ``r,g,b`` / ``r,g,b,a`` (0–255) or a CSS
    name (``white``, ``black``, ``red``, …; ``transparent`` is (0, 0, 0, 0)) as an RGB or RGBA tuple."""
    value = text.strip().lower()
    if value == "transparent":
        return (0, 0, 0, 0)
    if "," in value and not value.startswith(("rgb", "hsl", "hsv")):
        try:
            parts = tuple(int(p) for p in value.split(","))
        except ValueError:
            raise ValueError(f"invalid colour {text!r}: expected {_COLOR_NAMES_HINT}") from None
        return _check_color(parts, text)
    try:
        return tuple(ImageColor.getrgb(value))
    except ValueError:
        raise ValueError(f"invalid colour {text!r}: expected {_COLOR_NAMES_HINT}") from None


def _check_color(color, text=None) -> tuple[int, ...]:
    parts = tuple(int(c) for c in color)
    if len(parts) not in (3, 4) or not all(0 <= c <= 255 for c in parts):
        shown = text if text is not None else color
        raise ValueError(f"invalid colour {shown!r}: 3 or 4 values in 0–255 expected")
    return parts


# -- batches -----------------------------------------------------------------------------------
@dataclass
class BatchReport:
    """What :func:`remove_batch` did: outputs written, skipped (already there), failures, and inputs
    left out of the folder listing (``left_out``: broken links, links to folders; see
    :func:`~u2net.data.io.list_images`), each with its reason. ``qa_csv_error``: why the QA table could not
    be written (one line naming the file), when it could not."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    flagged: int = 0  # outputs with a QA flag (see u2net.inference.qa)
    qa_csv_error: str | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed

    def summary(self) -> str:
        skipped = f"{self.skipped} skipped (output exists; --overwrite to replace)" if self.skipped else "0 skipped"
        left_out = f"; {len(self.left_out)} link(s)/folder(s) skipped" if self.left_out else ""
        flagged = f"; {self.flagged} flagged by QA" if self.flagged else ""
        return f"{self.total} image(s): {self.done} written, {skipped}, {self.failed} failed{left_out}{flagged}"


# The largest side each lossy-capable format holds (libwebp's and libjpeg's limits); PNG's is 2³¹ - 1.
MAX_OUTPUT_SIDE = {"webp": 16383, "jpeg": 65500}


def output_size_problem(format: str, size: tuple[int, int]) -> str | None:
    """Why an output of ``size`` = (width, height) px cannot be written as ``format``, or ``None``."""
    limit = MAX_OUTPUT_SIDE.get(format)
    if limit is None or max(size) <= limit:
        return None
    return f"{size[0]}×{size[1]} px: {OUTPUT_FORMATS[format][1]} holds at most {limit} px a side; write png instead"


def output_format_for(src: str | os.PathLike, dst: str | os.PathLike, format: str | None = None) -> str:
    """The output format's name: ``format`` when given; else, for one input file written to a file named
    ``.png``, ``.webp``, ``.jpg`` or ``.jpeg``, the one its suffix names; else ``png``."""
    if format is not None:
        return format
    src, dst = Path(src), Path(dst)
    named = format_of_suffix(dst.suffix) if not src.is_dir() and not dst.is_dir() else None
    return named or "png"


def needs_alpha(options: RemovalOptions) -> bool:
    """Whether the outputs of ``options`` can be transparent (so a format without alpha, JPEG, cannot hold
    them): not for a mask, nor on a background image or an opaque background colour."""
    if options.mask_only or options.bg_image is not None:
        return False
    return options.bg_color is None or (len(options.bg_color) == 4 and options.bg_color[3] < 255)


def plan_outputs(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    skipped: list[tuple[Path, str]] | None = None,
    format: str = "png",
    refused: list[tuple[Path, str]] | None = None,
) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder, outputs named for ``format`` (see
    :data:`~u2net.inference.batch.OUTPUT_FORMATS`: ``.png``, ``.webp``, ``.jpg``).

    A folder is searched recursively for images (by extension, see ``IMAGE_EXTENSIONS``) and the
    output tree mirrors it: ``src/a/b.jpg`` -> ``dst/a/b.png``. Two inputs of one folder with the same
    stem (``b.jpg``, ``b.png``) keep their full names (``b.jpg.png``, ``b.png.png``). A ``dst`` inside
    ``src`` is not searched. For a file, ``dst`` is the output file if its suffix is the format's
    (``.jpeg`` too for JPEG), else a folder that gets ``<stem>.<suffix>``. Links to folders and broken
    links are not followed; with a ``skipped`` list they are appended to it with the reason. A pipe,
    socket or device is refused (``ValueError``): it is no folder of images.

    Some names cannot be given stably: ``b.jpg.png`` (output ``b.jpg.png``) beside ``b.jpg`` and ``b.png``
    (whose clash gives ``b.jpg`` the output ``b.jpg.png`` too), or names differing only in case. Which input
    an existing output belongs to would then depend on the other files present, and a re-run could skip an
    input as done on another's output. With a ``refused`` list such inputs get no output and are appended to
    it with the reason; without one they get numbered names (``b.jpg.png.png``, ``b.jpg.2.png``).
    """
    src, dst, suffix = Path(src), Path(dst), OutputFormat(format).suffix
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if not src.is_file() and not src.is_dir():  # listing a FIFO would find "no images" and succeed
        raise ValueError(
            f"{src}: not a file or folder (a pipe, socket or device); to read a stream, give - and redirect it"
        )
    if src.is_file():
        if format_of_suffix(dst.suffix) == format and not dst.is_dir():
            out = dst
        elif dst.suffix == "" or dst.is_dir():
            out = dst / f"{src.stem}{suffix}"
        else:
            raise ValueError(
                f"{dst}: outputs are {OUTPUT_FORMATS[format][1]} files; name the output '{suffix}' or give a folder"
            )
        if out.resolve() == src.resolve():
            raise ValueError(f"{out}: the output would overwrite the input")
        return [(src, out)]
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output folder must differ from the input folder")
    inside = dst.resolve().is_relative_to(src.resolve())
    listed = list_images(src, recursive=True, skipped=skipped)
    files = [p for p in listed if not (inside and p.resolve().is_relative_to(dst.resolve()))]
    clashes: dict[Path, str] | None = None if refused is None else {}
    names = _output_names([path.relative_to(src) for path in files], suffix, clashes)
    if refused is not None:
        refused.extend((src / rel, why) for rel, why in clashes.items())
    return [(path, dst / names[path.relative_to(src)]) for path in files if path.relative_to(src) in names]


def _output_names(rels: list[Path], suffix: str = ".png", refused: dict[Path, str] | None = None) -> dict[Path, Path]:
    """Each input's output name: ``a/b.jpg`` -> ``a/b.png`` (for ``suffix`` ``.png``); inputs whose stems
    clash (``b.jpg`` and ``b.png``, or names differing only in case) keep their full names (``b.jpg.png``).

    A name depends only on the input's own path and whether another input shares its stem, never on a
    chain of renames. An input whose name is one another input could have (its short or full name,
    compared without case) is ambiguous: which of the two an existing output belongs to would depend on
    the other files present. With ``refused``, such inputs are put there with the reason and get no name;
    without it, they get that name where still free, else their full name or a numbered one."""

    def key(name: Path) -> str:
        return name.as_posix().lower()

    short = {rel: rel.parent / f"{rel.stem}{suffix}" for rel in rels}
    full = {rel: rel.parent / f"{rel.name}{suffix}" for rel in rels}
    stems: dict[str, int] = {}
    claims: dict[str, list[Path]] = {}  # a name -> the inputs that could be written to it
    for rel in rels:
        stems[key(short[rel])] = stems.get(key(short[rel]), 0) + 1
        for name in {key(short[rel]), key(full[rel])}:
            claims.setdefault(name, []).append(rel)
    names: dict[Path, Path] = {}
    ambiguous: list[tuple[Path, Path]] = []
    for rel in rels:
        name = full[rel] if stems[key(short[rel])] > 1 else short[rel]
        rivals = [other for other in claims[key(name)] if other != rel]
        if not rivals:
            names[rel] = name
            continue
        ambiguous.append((rel, name))
        if refused is not None:
            refused[rel] = (
                f"ambiguous output name: {rel.name} and {rivals[0].name} may both be written to {name.name}; "
                "rename one of them"
            )
    if refused is None:
        taken = {key(name) for name in names.values()}
        for rel, name in ambiguous:
            candidates = [name, full[rel]] + [rel.parent / f"{rel.name}.{n}{suffix}" for n in range(2, len(rels) + 3)]
            names[rel] = next(c for c in candidates if key(c) not in taken)
            taken.add(key(names[rel]))
    return names


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop
        return None


def _inputs_overwritten(pairs: list[tuple[Path, Path]]) -> dict[tuple[Path, Path], str]:
    """The pairs whose output is an input of the same run (an output folder that holds the input folder, a
    linked sub-folder, a hard link), with the reason: writing them would destroy that input."""
    by_path: dict[Path, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for source, _ in pairs:
        by_path.setdefault(_resolved(source), source)
        with contextlib.suppress(OSError):
            info = source.stat()
            by_inode.setdefault((info.st_dev, info.st_ino), source)
    problems = {}
    for pair in pairs:
        target = _resolved(pair[1])
        victim = by_path.get(target) if target is not None else None
        if victim is None:
            with contextlib.suppress(OSError):  # the same file under another name (a case-insensitive disk)
                info = pair[1].stat()
                victim = by_inode.get((info.st_dev, info.st_ino))
        if victim is not None:
            problems[pair] = f"its output {pair[1]} is the input {victim} of this run: not written"
    return problems


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header; ``None`` when unreadable (the run then reports why)."""
    try:
        with open_image(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any decoder error is the pipeline's to report, with its reason
        return None


# The most memory an image takes per pixel on its way through remove_batch with the default options: the decoded
# RGB array, the full-size float32 map and its temporaries, the alpha and the RGBA output (19 B/px measured on a
# 24 MP JPEG, by peak RSS).
PIPELINE_BYTES_PER_PIXEL = 20


def _pipeline_bytes(
    pair: tuple[Path, Path], header_size: Callable[[Path], tuple[int, int] | None] = _header_size
) -> int:
    """About the most bytes ``pair``'s input holds in :func:`remove_batch` (run_pipeline's ``cost``), from its
    header (read by ``header_size``); 0 when that is unreadable: decoding then fails the image with the reason."""
    size = header_size(pair[0])
    return size[0] * size[1] * PIPELINE_BYTES_PER_PIXEL if size else 0


def remove_batch(
    remover: BackgroundRemover,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: RemovalOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    format: str | None = "png",
    quality: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    qa_csv: str | os.PathLike | None = None,
) -> BatchReport:
    """Remove the background of a file or of every image under a folder (see :func:`plan_outputs`).

    Images are decoded and preprocessed by ``workers`` threads (default
    :data:`~u2net.inference.batch.DEFAULT_WORKERS`; 0: one image after another on this thread) ahead of
    the model, which runs on batches of ``batch_size`` (default: 8 on a GPU, 4 otherwise), and finished,
    encoded and written by as many threads behind it. ``format``: ``png``, ``webp`` or ``jpeg``
    (``None``: see :func:`output_format_for`); ``quality`` 1–100 for lossy WebP or JPEG (WebP without it
    is lossless). JPEG has no alpha: it needs ``mask_only``, an opaque ``bg_color`` or a ``bg_image``.

    With ``qa_csv``, the CSV gets one row per output (input, output, confidence, flags; see
    :func:`save_qa_table`), those of outputs skipped as done included, also when the run is interrupted,
    and the report counts the flagged outputs. A file there that is not such a table is refused
    (``ValueError``) before any work; a failure to write it is ``report.qa_csv_error``.

    Existing outputs are skipped unless ``overwrite``. Each output is written to a temporary file and
    renamed, so an interrupted run leaves no half-written file. An unreadable or corrupt input (or any
    other error on one image) is recorded in the report with its reason and the batch goes on; so are
    inputs whose output would be another input of the run, inputs whose output name is ambiguous (see
    :func:`plan_outputs`), and images larger than the format holds (from their header, before the model
    runs). An output folder where nothing can be written is a ``ValueError`` before any work.
    """
    from tqdm import tqdm

    options = options or RemovalOptions()
    output_format = OutputFormat(output_format_for(src, dst, format), quality)
    if not output_format.has_alpha and needs_alpha(options):
        raise ValueError("JPEG has no transparency: give an opaque bg_color or a bg_image, or mask_only")
    previous = None if qa_csv is None else read_qa_csv(qa_csv)
    report = BatchReport()
    refused: list[tuple[Path, str]] = []
    pairs = plan_outputs(src, dst, report.left_out, output_format.name, refused)
    problems = _inputs_overwritten(pairs)
    own = [pair for pair in pairs if pair not in problems]  # the outputs that are these inputs' own
    todo = [pair for pair in own if overwrite or not pair[1].exists()]
    report.skipped = len(own) - len(todo)
    if todo:
        problem = folder_write_problem(Path(dst) if Path(src).is_dir() else todo[0][1].parent)
        if problem:
            raise ValueError(problem)
    header_size = functools.cache(_header_size)  # each header read once: the format's limits, then the cost
    if output_format.name in MAX_OUTPUT_SIDE and not options.crop:  # a crop's size is known only after the model
        for pair in todo:
            size = header_size(pair[0])
            problem = size and output_size_problem(output_format.name, size)
            if problem:
                problems[pair] = problem
        todo = [pair for pair in todo if pair not in problems]
    bar = tqdm(
        total=len(pairs) + len(refused),
        initial=report.skipped + len(problems) + len(refused),
        unit="img",
        desc="remove",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def on_result(pair: tuple[Path, Path], error: BaseException | None) -> None:
        if error is None:
            report.done += 1
        else:
            problems[pair] = read_problem(error)
            bar.set_postfix(failed=len(problems))
        bar.update()

    qualities: dict[tuple[Path, Path], MaskQuality] | None = None if qa_csv is None else {}
    prepare, finish = _cutout_stages(remover, options, output_format, qualities)
    try:
        with bar:
            run_pipeline(
                todo,
                prepare,
                lambda batch: remover.model_output(batch, options),
                finish,
                on_result,
                batch_size=batch_size or default_batch_size(remover.predictor),
                workers=DEFAULT_WORKERS if workers is None else workers,
                cost=functools.partial(_pipeline_bytes, header_size=header_size),
            )
    except KeyboardInterrupt:
        if qualities is not None:  # keep what was done: a re-run starts from this table (no slow re-reads now)
            save_qa_table(qa_csv, own, qualities, options, report, previous, assess_existing=False)
            if report.qa_csv_error:
                warnings.warn(report.qa_csv_error, stacklevel=2)
        raise
    # in input order (the listing is sorted)
    report.failures = sorted(refused + [(pair[0], problems[pair]) for pair in pairs if pair in problems])
    if qualities is not None:
        save_qa_table(qa_csv, own, qualities, options, report, previous)
    return report


# -- the QA table ------------------------------------------------------------------------------
QA_COLUMNS = ("input", "output", "confidence", "flags")
NOT_ASSESSED = "not_assessed"  # the flags of an output on disk whose mask cannot be read back (a composite)

QARow = tuple[tuple[str, str], MaskQuality | None]  # ((input, output), quality; None: not assessed)


def _csv_value(cell: str) -> str:
    """A name cell as written before :func:`~u2net.fileio.csv_cell` escaped it."""
    return cell[1:] if cell.startswith("'") else cell


def write_qa_csv(
    path: str | os.PathLike, rows: list[tuple[tuple[str | os.PathLike, str | os.PathLike], MaskQuality | None]]
) -> None:
    """The QA table of a batch (input, output, confidence, flags), written atomically.

    Names that are not UTF-8 keep their bytes (surrogate escapes, as ``os.fsdecode`` gives them); cells a
    spreadsheet would run as a formula (``= + - @``) get a leading quote; a quality of ``None`` (a mask that
    could not be read back) is an empty confidence with the flag ``not_assessed``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(QA_COLUMNS)
    for (source, output), quality in rows:
        if quality is None:
            confidence, flags = "", NOT_ASSESSED
        else:
            confidence, flags = f"{quality.confidence:.4f}", quality.header_value()
        writer.writerow([csv_cell(os.fspath(source)), csv_cell(os.fspath(output)), confidence, flags])
    with atomic_write(Path(path)) as f:
        f.write(text.getvalue().encode("utf-8", "surrogateescape"))


def read_qa_csv(path: str | os.PathLike) -> list[QARow]:
    """The rows of a table :func:`write_qa_csv` wrote (none when there is no file), for a later run to keep.

    A file that is not such a table (another CSV, a folder, a pipe) raises ``ValueError`` with one line naming
    it: it is the user's, and must not be replaced."""
    path = Path(path)
    if not os.path.exists(path):  # unlike Path.exists, never raises (an unsearchable parent)
        return []
    if not os.path.isfile(path):
        raise ValueError(f"{path}: is a folder or a special file, not a QA table; give a file name")
    not_a_table = f"{path}: exists and is not a QA table of u2net remove ({','.join(QA_COLUMNS)}); give another file"
    rows: list[QARow] = []
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:  # an empty file holds nothing to keep
                return []
            if tuple(header) != QA_COLUMNS:
                raise ValueError(not_a_table)
            for cells in reader:
                if len(cells) != len(QA_COLUMNS):
                    raise ValueError(not_a_table)
                source, output, confidence, flags = cells
                try:
                    quality = MaskQuality(float(confidence), () if flags == "ok" else tuple(flags.split(",")))
                except ValueError:  # empty: not assessed
                    quality = None
                rows.append(((_csv_value(source), _csv_value(output)), quality))
    except csv.Error:  # e.g. a binary file: one huge "field"
        raise ValueError(not_a_table) from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the QA table ({exc.strerror or type(exc).__name__})") from None
    return rows


def _assess_output(path: Path, options: RemovalOptions) -> MaskQuality | None:
    """:func:`assess_mask` of an output already on disk: a mask output itself, a cut-out's alpha channel;
    ``None`` for a composite on a background (its alpha is not the mask) or a file that cannot be read."""
    if not options.mask_only and (options.bg_color is not None or options.bg_image is not None):
        return None
    try:
        with open_image(path) as img:
            if options.mask_only:
                alpha = np.asarray(img.convert("L"))
            elif "A" in img.getbands() or "transparency" in img.info:
                alpha = np.asarray(img.convert("RGBA").getchannel("A"))
            else:
                return None
    except Exception:  # noqa: BLE001 - an unreadable output is "not assessed", never a failed run
        return None
    return assess_mask(alpha)


def save_qa_table(
    path: str | os.PathLike,
    pairs: list[tuple[Path, Path]],
    qualities: dict[tuple[Path, Path], MaskQuality],
    options: RemovalOptions,
    report: BatchReport,
    previous: list[QARow] | None = None,
    assess_existing: bool = True,
) -> None:
    """Write the QA table of a run's ``pairs``: one row per output there is, in input order.

    A row is this run's assessment (``qualities``); else, for an output already there (skipped as done,
    or left by an earlier run), the row ``previous`` (default: the table at ``path``) has for the same
    input and output, else (``assess_existing``) :func:`assess_mask` of the file's alpha (of a cropped
    cut-out: the crop's). Earlier rows about other outputs follow, as they were. ``report.flagged`` counts
    this run's flagged rows; a write error becomes ``report.qa_csv_error`` (one line), not an exception."""
    if previous is None:
        previous = read_qa_csv(path)
    earlier = dict(previous)
    planned = {os.fspath(output) for _, output in pairs}
    rows: list[QARow] = []
    for pair in pairs:
        key = (os.fspath(pair[0]), os.fspath(pair[1]))
        if pair in qualities:
            rows.append((key, qualities[pair]))
        elif key[1] != "-" and pair[1].exists():
            if key in earlier:
                rows.append((key, earlier[key]))
            elif assess_existing:
                rows.append((key, _assess_output(pair[1], options)))
    report.flagged = sum(quality is not None and not quality.ok for _, quality in rows)
    others = [row for row in previous if row[0][1] not in planned]
    try:
        write_qa_csv(path, rows + others)
    except OSError as exc:
        report.qa_csv_error = f"{path}: the QA table was not written ({exc.strerror or reason(exc)})"


def _cutout_stages(remover: BackgroundRemover, options: RemovalOptions, output_format: OutputFormat, qualities: dict):
    """The ``prepare`` and ``finish`` stages of :func:`~u2net.inference.batch.run_pipeline` for an
    (input, output) pair: decode and make the model's input; make the output image, write it and put
    the mask's assessment in ``qualities``."""

    def prepare(pair: tuple[Path, Path]) -> tuple[np.ndarray, tuple]:
        rgb, source_alpha = load_rgb_alpha(pair[0])
        return remover.model_input(rgb, options), (rgb, source_alpha)

    def finish(pair: tuple[Path, Path], state: tuple, raw: np.ndarray) -> None:
        rgb, source_alpha = state
        alpha, foreground = remover.alpha_from_output(rgb, raw, options)
        image = remover.output_image(source_alpha, alpha, foreground, options)
        problem = output_size_problem(output_format.name, image.size)  # a crop's size is known only now
        if problem:  # reported as the planning check's are, without an exception type
            raise ImageReadError(os.fspath(pair[1]), problem)
        with atomic_write(pair[1]) as f:
            output_format.save(image, f)
        if qualities is not None:
            qualities[pair] = assess_mask(alpha)  # one key per thread: no lock needed

    return prepare, finish


__all__ = [
    "BackgroundRemover",
    "BatchReport",
    "RemovalOptions",
    "alpha_matting",
    "clean_mask",
    "composite",
    "composite_color",
    "cover",
    "load_rgb",
    "mask_bbox",
    "needs_alpha",
    "output_format_for",
    "output_size_problem",
    "parse_color",
    "plan_outputs",
    "rembg_mask",
    "read_qa_csv",
    "remove_batch",
    "save_qa_table",
    "write_qa_csv",
]
