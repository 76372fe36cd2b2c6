"""What a removal does: :class:`RemovalOptions` and the measured ``--quality`` presets."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor

from ..data.preprocessing import RESIZE_METHODS
from .refine import UPSAMPLING

__all__ = ["DEFAULT_QUALITY", "QUALITY_PRESETS", "VIEWS", "RemovalOptions", "check_color", "parse_color"]

VIEWS = (1, 2, 4)  # RemovalOptions.views: the photo; and its mirror image; and both shifted by VIEW_SHIFT


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
            self.bg_color = check_color(self.bg_color)
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


# -- colours (bg_color) ------------------------------------------------------------------------
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
        return check_color(parts, text)
    try:
        return tuple(ImageColor.getrgb(value))
    except ValueError:
        raise ValueError(f"invalid colour {text!r}: expected {_COLOR_NAMES_HINT}") from None


def check_color(color, text: str | None = None) -> tuple[int, ...]:
    """``color`` (3 or 4 numbers) as an RGB or RGBA tuple of ints in 0–255; ``ValueError`` naming it otherwise."""
    parts = tuple(int(c) for c in color)
    if len(parts) not in (3, 4) or not all(0 <= c <= 255 for c in parts):
        shown = text if text is not None else color
        raise ValueError(f"invalid colour {shown!r}: 3 or 4 values in 0–255 expected")
    return parts
