"""What a removal does: :class:`RemovalOptions`, the measured ``--quality`` presets, and the one declaration of
each option (:data:`OPTION_SPECS`: bounds, help, which front ends expose it) that the CLI's flags, the service's
form fields and this module's own checks are made from."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor

from ..data.preprocessing import RESIZE_METHODS
from .refine import UPSAMPLING

__all__ = [
    "DEFAULT_QUALITY",
    "EXCLUSIVE",
    "OPTION_SPECS",
    "QUALITY_PRESETS",
    "UNSURE_BAND",
    "VIEWS",
    "OptionSpec",
    "RemovalOptions",
    "check_color",
    "front_end_specs",
    "missing_pymatting",
    "options_from",
    "parse_color",
]

VIEWS = (1, 2, 4)  # RemovalOptions.views: the photo; and its mirror image; and both shifted by VIEW_SHIFT
# RemovalOptions.unsure_share of the default preset: the extra views run for a photo whose first view leaves at least
# 5 % of the map unsure. Tuned on duts_te_dev (558 photos): the cheapest rule that kept 90 % of the mirror view's
# gain in Boundary IoU and relaxed boundary F there (94 % and 94 %, at 1.32 model runs a photo instead of 2); ecssd_dev
# is its held-out check (docs/quality.md, "Extra views where the model is unsure").
UNSURE_SHARE = 0.05
UNSURE_BAND = (0.1, 0.9)  # probabilities strictly between these count as unsure: unsure_share's and u2net mine's


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
    - ``unsure_share``: the views after the first run only for a photo whose first view is unsure: at least this
      share of its S×S map strictly between 0.1 and 0.9 after the min–max stretch
      (:func:`~u2net.inference.remover.unsure_fraction`); where the model is sure, more views change little. 0 runs
      them for every photo.
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
    unsure_share: float = UNSURE_SHARE
    sharpen: float = 1.5

    def __post_init__(self) -> None:
        for names in EXCLUSIVE:
            given = [name for name in names if getattr(self, name) is not None]
            if len(given) > 1:
                raise ValueError(f"give {' or '.join(given)}, not both")
        if isinstance(self.bg_color, str):
            self.bg_color = parse_color(self.bg_color)
        elif self.bg_color is not None:
            self.bg_color = check_color(self.bg_color)
        for name in self.__dataclass_fields__:
            problem = SPECS[name].problem(getattr(self, name))
            if problem:
                raise ValueError(problem)

    @classmethod
    def preset(cls, quality: str, **changes) -> RemovalOptions:
        """The options of a :data:`QUALITY_PRESETS` entry, with ``changes`` on top."""
        problem = SPECS["quality"].problem(quality)
        if problem:
            raise ValueError(problem)
        return cls(**{**QUALITY_PRESETS[quality], **changes})


# What each --quality means, as changes to RemovalOptions' defaults (the default preset has none), measured by
# benchmarks/quality.py on ecssd_dev and duts_te_dev; the sharpening gain was picked on duts_tr2k
# (docs/quality.md).
QUALITY_PRESETS: dict[str, dict[str, object]] = {
    # one model run, Lanczos down and up on the float map: rembg's cost, its scores (MAE lower, the rest level)
    "fast": {"views": 1, "sharpen": 1.0},
    # the defaults: Lanczos down and up, the photo and (where the model is unsure) its mirror image averaged,
    # edges sharpened 1.5-fold
    "balanced": {},
    # four views (also shifted) of every photo; the guided filter and the second pass measured worse
    # (docs/quality.md)
    "best": {"views": 4, "unsure_share": 0.0},
    # best, then the uncertain band matted (hair, fur, plants): lower matting errors on real alpha mattes, higher
    # MAE and lower boundary IoU on hard-edged subjects than best (docs/quality.md, benchmarks/soft_edges.py)
    "soft": {"views": 4, "unsure_share": 0.0, "soft_edges": True},
}
DEFAULT_QUALITY = "balanced"


# -- each option declared once: bounds, default (the dataclass's), help, the front ends that expose it ---------
FRONT_ENDS = ("cli", "api")  # `u2net remove` flags; the service's form fields and JSON members


@dataclass(frozen=True)
class OptionSpec:
    """One removal option as every front end shows it. The bounds are closed (``low``/``high``) unless ``open_low``;
    ``choices`` lists the values allowed; ``fronts`` says which front ends expose it and ``why`` why the others do
    not; ``flag`` is the CLI's name where it differs from ``--name-with-dashes``. The CLI's flags and the service's
    fields are generated from these (tests/test_option_declarations.py holds them to it)."""

    name: str
    type: type  # bool, int, float or str
    help: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    choices: tuple | None = None
    fronts: tuple[str, ...] = FRONT_ENDS
    why: str = ""
    flag: str | None = None
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def bounds_text(self) -> str:
        """The allowed values, as an error message shows them: ``in [0, 255]``, ``>= 0``, ``> 0``, ``one of …``."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low}, {self.high}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return ""

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not allowed (one line naming the option), or ``None``; ``None`` values are allowed."""
        if value is None or self.type is bool:
            return None
        if self.choices is not None:
            ok = value in self.choices
        else:  # written so that NaN fails both comparisons
            above = self.low is None or (value > self.low if self.open_low else value >= self.low)
            ok = above and (self.high is None or value <= self.high)
        return None if ok else f"{self.name} must be {self.bounds_text()}, got {value!r}"


_LIBRARY_ONLY = "library only: a tuning knob of the option above, its default measured"
_RESEARCH = "library only: measured no better than the presets (docs/quality.md); kept for experiments"
_MATTING = "refine the edges with closed-form alpha matting (pymatting; slow): trimap from the mask"

OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "quality",
        str,
        "how the mask is made (docs/quality.md): fast (one model run, anti-aliased resize "
        "as rembg), balanced (the photo and its mirror image averaged, edges sharpened: two runs), best (four "
        "views, also shifted: four runs), soft (best, then hair, fur and plants matted into soft edges; needs "
        "pymatting; costs hard-edged subjects some edge accuracy)",
        choices=tuple(QUALITY_PRESETS),
    ),
    OptionSpec(
        "views",
        int,
        "override the preset's test-time views: 1 (the photo), 2 (and its mirror image), "
        "4 (both also shifted); each costs one model run",
        choices=VIEWS,
    ),
    OptionSpec(
        "unsure_share",
        float,
        "override the preset's rule for the extra views: run them only for photos whose first view leaves at "
        "least this share of the map unsure (0.1 < p < 0.9); 0: for every photo",
        low=0,
        high=1,
        metavar="S",
    ),
    OptionSpec(
        "sharpen",
        float,
        "override the preset's edge sharpening: probabilities through sigmoid(G * logit(p)); 1 leaves them",
        low=0,
        open_low=True,
        metavar="G",
    ),
    OptionSpec("mask_only", bool, "output the alpha mask (grayscale) only"),
    OptionSpec("crop", bool, "crop to the subject's bounding box"),
    OptionSpec("padding", int, "padding around the crop, px", low=0, high=10_000, metavar="N"),
    OptionSpec(
        "crop_threshold", int, "pixels with alpha >= A count as the subject when cropping", low=1, high=255, metavar="A"
    ),
    OptionSpec(
        "bg_color", str, "put a colour behind the subject: #RRGGBB, #RRGGBBAA, r,g,b[,a] or a name", metavar="COLOR"
    ),
    OptionSpec(
        "bg_image",
        str,
        "put an image behind the subject (scaled to cover)",
        fronts=("cli",),
        why="the service takes one image per request",
        metavar="PATH",
    ),
    OptionSpec("threshold", float, "binarise the mask at this probability (0-1)", low=0, high=1, metavar="T"),
    OptionSpec("post_process", bool, "morphological clean-up of the mask: opening/closing, small islands dropped"),
    OptionSpec("morph_kernel", int, "clean-up kernel, px", low=1, fronts=(), why=_LIBRARY_ONLY),
    OptionSpec(
        "min_island",
        float,
        "clean-up: islands below this share of the largest are dropped",
        low=0,
        high=1,
        fronts=(),
        why=_LIBRARY_ONLY,
    ),
    OptionSpec("alpha_matting", bool, _MATTING),
    OptionSpec("fg_threshold", int, "alpha matting: sure foreground above N", low=0, high=255, metavar="N"),
    OptionSpec("bg_threshold", int, "alpha matting: sure background below N", low=0, high=255, metavar="N"),
    OptionSpec("erode_size", int, "alpha matting: trimap erosion, px", low=0, high=1000, metavar="N"),
    OptionSpec(
        "decontaminate",
        bool,
        "take the old background's colour out of semi-transparent edges (pymatting; like rembg -dc)",
    ),
    OptionSpec(
        "stretch",
        bool,
        "min-max normalise the model's map first, as the original U2-Net and rembg do; "
        "off: keep the model's probabilities",
        flag="--no-stretch",
    ),
    OptionSpec("rembg_compatible", bool, "compute the mask exactly as rembg's u2net_custom session"),
    OptionSpec("soft_edges", bool, "matte the uncertain band", fronts=(), why="chosen with the soft preset"),
    OptionSpec(
        "input_resize",
        str,
        "resize of the photo to the model's input",
        choices=RESIZE_METHODS,
        fronts=(),
        why=_RESEARCH,
    ),
    OptionSpec(
        "upsampling", str, "resize of the model's map to the photo", choices=UPSAMPLING, fronts=(), why=_RESEARCH
    ),
    OptionSpec("second_pass", bool, "run the model again on a small subject's crop", fronts=(), why=_RESEARCH),
    OptionSpec(
        "second_pass_area",
        float,
        "second pass below this share of the photo",
        low=0,
        high=1,
        open_low=True,
        fronts=(),
        why=_RESEARCH,
    ),
)
SPECS = {spec.name: spec for spec in OPTION_SPECS}
EXCLUSIVE = (("bg_color", "bg_image"),)  # options of which at most one may be given
NEEDS_PYMATTING = ("alpha_matting", "decontaminate", "soft_edges")


def front_end_specs(front: str) -> list[OptionSpec]:
    """The options ``front`` (``cli`` or ``api``) exposes, in declaration order."""
    return [spec for spec in OPTION_SPECS if front in spec.fronts]


def options_from(values: dict[str, object]) -> RemovalOptions:
    """The options a front end's user gave: ``quality`` (the preset; default :data:`DEFAULT_QUALITY`), then
    every value that is not ``None`` on top of it. ``ValueError`` (one line naming the option) for a bad one."""
    given = {name: value for name, value in values.items() if value is not None}
    return RemovalOptions.preset(given.pop("quality", DEFAULT_QUALITY), **given)


def missing_pymatting(options: RemovalOptions) -> list[tuple[str, str | None]]:
    """The options that need pymatting, are set, and cannot have it here (found, not imported: that takes a
    second), each as a front end takes it: (its name, ``None``), or ``("quality", preset)`` for one that no front end
    exposes and a preset sets (``soft_edges``: ``quality soft``)."""
    if importlib.util.find_spec("pymatting") is not None:
        return []
    wanted = []
    for name in (name for name in NEEDS_PYMATTING if getattr(options, name)):
        preset = next((quality for quality, changes in QUALITY_PRESETS.items() if changes.get(name)), None)
        wanted.append(("quality", preset) if not SPECS[name].fronts and preset else (name, None))
    return wanted


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
