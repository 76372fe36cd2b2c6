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

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.io import ImageInput, load_rgb, load_rgb_alpha, unit_to_uint8
from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, resize_image
from .compositing import compose_output
from .options import UNSURE_BAND, RemovalOptions
from .refine import (
    alpha_matting,
    clean_mask,
    decontaminate_colors,
    paste_probability,
    sharpen_probability,
    stretch_range,
    subject_box,
    upsample_probability,
)

__all__ = ["BackgroundRemover", "Decoded", "Matte", "matte_here", "rembg_mask", "rembg_preprocess", "unsure_fraction"]

REMBG_INPUT_SIZE = 320  # rembg feeds every U²-Net session 320×320
VIEW_SHIFT = 1 / 40  # of the model input's side: 8 px at 320², a quarter of U²-Net's coarsest (32 px) cell

# Alpha matting of (photo H×W×3 uint8, mask H×W uint8, options) -> (alpha H×W uint8, colours H×W×3 uint8)
Matte = Callable[[np.ndarray, np.ndarray, RemovalOptions], tuple[np.ndarray, np.ndarray]]


@dataclass
class Decoded:
    """An image between the pipeline's stages: H×W×3 uint8 RGB and its own alpha (H×W uint8; ``None`` when
    opaque)."""

    rgb: np.ndarray
    source_alpha: np.ndarray | None


def matte_here(rgb: np.ndarray, alpha: np.ndarray, options: RemovalOptions) -> tuple[np.ndarray, np.ndarray]:
    """Alpha matting in this thread (:func:`~u2net.inference.refine.alpha_matting` with the options' trimap
    settings): (alpha, foreground colours; the photo's where matting was skipped)."""
    matted, foreground = alpha_matting(rgb, alpha, options.fg_threshold, options.bg_threshold, options.erode_size)
    return matted, (foreground if foreground is not None else rgb)


class BackgroundRemover:
    """Removes backgrounds with a :class:`~u2net.inference.Predictor` (or any object with its ``preprocess`` and
    ``predict_batch``). A cut-out is the pipeline :meth:`cutout`: :meth:`prepare` (decode, the model's input; per
    image), :meth:`model_output` (the model, on a batch), :meth:`finish` (mask, refinements, output image; per
    image). A folder job spreads the same three over threads (:mod:`u2net.inference.folder`)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str = "auto", **kwargs) -> BackgroundRemover:
        """A remover for a checkpoint, official ``.pth``, pretrained tag or ``.onnx`` file."""
        from .predictor import Predictor

        return cls(Predictor.from_path(path, device, **kwargs))

    # -- the pipeline ----------------------------------------------------------------------------
    def cutout(
        self, image: ImageInput, options: RemovalOptions | None = None, matte: Matte | None = None
    ) -> tuple[Image.Image, np.ndarray]:
        """(:meth:`remove`'s output, the H×W uint8 alpha mask it was made with, before any crop): the mask
        is what :func:`~u2net.inference.qa.assess_mask` judges. ``matte``: who does alpha matting (default
        :func:`matte_here`; the service runs it in a child process it can kill)."""
        options = options or RemovalOptions()
        model_input, decoded = self.prepare(image, options)
        return self.finish(decoded, self.model_output(model_input[None], options)[0], options, matte)

    def prepare(self, image: ImageInput, options: RemovalOptions) -> tuple[np.ndarray, Decoded]:
        """The pipeline's first stage: (the model's 3×S×S input, the decoded image for :meth:`finish`)."""
        rgb, source_alpha = load_rgb_alpha(image)
        return self.model_input(rgb, options), Decoded(rgb, source_alpha)

    def finish(
        self, decoded: Decoded, raw: np.ndarray, options: RemovalOptions, matte: Matte | None = None
    ) -> tuple[Image.Image, np.ndarray]:
        """The pipeline's last stage: (output image, H×W uint8 alpha) from the model's S×S map ``raw``."""
        alpha, foreground = self.alpha_from_output(decoded.rgb, raw, options, matte)
        return compose_output(decoded.source_alpha, alpha, foreground, options), alpha

    def remove(self, image: ImageInput, options: RemovalOptions | None = None) -> Image.Image:
        """The cut-out as a PIL image: RGBA (alpha = mask) by default; the mask (``L``) with
        ``mask_only``; RGB (or RGBA for a translucent colour) composited on ``bg_color`` /
        ``bg_image``; cropped to the subject with ``crop``."""
        return self.cutout(image, options)[0]

    def mask(self, image: ImageInput, options: RemovalOptions | None = None) -> np.ndarray:
        """The H×W uint8 alpha mask (0–255) at the image's size, with ``threshold``,
        ``post_process`` and ``alpha_matting`` of ``options`` applied."""
        options = options or RemovalOptions()
        rgb = load_rgb(image)
        return self.alpha_from_output(
            rgb, self.model_output(self.model_input(rgb, options)[None], options)[0], options
        )[0]

    def model_input(self, rgb: np.ndarray, options: RemovalOptions) -> np.ndarray:
        """The model's input for an H×W×3 uint8 image: 3×S×S float32 (stack several for a batch)."""
        if options.rembg_compatible:
            size = getattr(getattr(self.predictor, "backend", None), "fixed_size", None) or REMBG_INPUT_SIZE
            return rembg_preprocess(rgb, size)
        return self.predictor.preprocess(rgb, resize=options.input_resize)

    def model_output(self, batch: np.ndarray, options: RemovalOptions) -> list[np.ndarray]:
        """The model's S×S probability maps for a batch of :meth:`model_input` arrays (N×3×S×S): the predictor's
        ``predict_batch``, averaged over ``options.views`` views of each input. With ``unsure_share`` the photo
        runs first and the other views follow only for the inputs whose map is unsure (:func:`unsure_fraction`);
        without, all the views run in one batch."""
        if options.views == 1 or options.rembg_compatible:
            return self.predictor.predict_batch(batch)
        if not options.unsure_share:
            return self._averaged_views(batch, options.views)
        maps = list(self.predictor.predict_batch(batch))
        unsure = [i for i, m in enumerate(maps) if unsure_fraction(m) >= options.unsure_share]
        if unsure:
            more = self._averaged_views(batch[unsure], options.views, first=np.stack([maps[i] for i in unsure]))
            for i, averaged in zip(unsure, more):
                maps[i] = averaged
        return maps

    def _averaged_views(self, batch: np.ndarray, views: int, first: np.ndarray | None = None) -> list[np.ndarray]:
        """Each input's S×S map averaged over ``views`` views, the other views in one run (the photo's own too,
        unless its maps are given as ``first``, N×S×S)."""
        n, side = len(batch), batch.shape[-1]
        shift = max(1, round(VIEW_SHIFT * side))
        inputs = [batch[..., ::-1]]
        if views == 4:
            # content moved right and down by `shift`, the uncovered edge repeated
            shifted = np.pad(batch, ((0, 0), (0, 0), (shift, 0), (shift, 0)), mode="edge")[..., :-shift, :-shift]
            inputs += [shifted, shifted[..., ::-1]]
        if first is None:
            inputs.insert(0, batch)
        maps = self.predictor.predict_batch(np.concatenate(inputs))
        if first is not None:
            maps = np.concatenate([first, maps])
        averaged = []
        for i in range(n):
            plain, mirrored = maps[i], maps[n + i][:, ::-1]
            views_of_i = [plain, mirrored]
            if views == 4:  # moved back; the last `shift` rows and columns no view shifted covers
                for unshifted, m in ((plain, maps[2 * n + i]), (mirrored, maps[3 * n + i][:, ::-1])):
                    back = unshifted.copy()
                    back[:-shift, :-shift] = m[shift:, shift:]
                    views_of_i.append(back)
            averaged.append(np.mean(views_of_i, axis=0, dtype=np.float32))
        return averaged

    def alpha_from_output(
        self, rgb: np.ndarray, raw: np.ndarray, options: RemovalOptions, matte: Matte | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final alpha H×W uint8, foreground colours H×W×3 uint8) from the model's S×S probabilities
        ``raw`` for ``rgb`` (the matted colours with ``alpha_matting``, by ``matte``, else the image)."""
        alpha = self._mask_from_output(rgb, raw, options)
        if options.soft_edges and options.threshold is None and not options.alpha_matting:
            from .soft_edges import soft_alpha  # pymatting: imported (seconds) only by those who ask for it

            alpha = unit_to_uint8(soft_alpha(rgb, alpha / np.float32(255.0)))
            return alpha, (rgb if options.mask_only else decontaminate_colors(rgb, alpha))
        if options.alpha_matting:
            return (matte or matte_here)(rgb, alpha, options)
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


def unsure_fraction(prob: np.ndarray) -> float:
    """The share of an S×S probability map strictly inside :data:`~u2net.inference.options.UNSURE_BAND` (0.1–0.9)
    after the min–max stretch: how much of the photo the model is unsure about (``RemovalOptions.unsure_share``
    compares it)."""
    low, high = UNSURE_BAND
    stretched = stretch_range(prob)
    return float(((stretched > low) & (stretched < high)).mean())


# -- rembg's own preprocessing and mask (rembg_compatible) ---------------------------------
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
