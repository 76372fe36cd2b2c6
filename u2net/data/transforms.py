"""Preprocessing and augmentation.

The default training recipe is the original one: resize to 320×320, random 288×288 crop, random
flip, then the original normalisation (divide by the image's own maximum, then ImageNet mean/std)
so that the official weights see what they were trained on. Validation and inference: resize only.

Note: the original code flips with ``image[::-1]``, i.e. *vertically*; we default to horizontal
flips (``hflip=0.5``) and offer ``vflip`` for exact reproduction.

Optional appearance augmentation for fine-tuning on small sets of one's own photos (all off by
default; the original recipe has none): colour jitter, blur and sensor noise, on the image only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

# ImageNet statistics: what the official weights (and every U²-Net we know of) were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
NORMALIZATIONS = ("max", "standard")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be 'max' or 'standard', got {normalization!r}")


def appearance_steps(color_jitter: float = 0.0, blur: float = 0.0, noise: float = 0.0) -> list:
    """Albumentations steps that change how an H×W×3 uint8 image looks, not where anything is, each
    applied with its probability: moderate colour jitter, a mild Gaussian or motion blur, mild Gaussian
    noise. Strengths stay moderate so that the masks still fit the changed images."""
    for name, p in (("color_jitter", color_jitter), ("blur", blur), ("noise", noise)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    steps: list = []
    if color_jitter > 0:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=color_jitter))
    if blur > 0:
        kinds = [A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.2)), A.MotionBlur(blur_limit=(3, 5))]
        steps.append(A.OneOf(kinds, p=blur))
    if noise > 0:
        steps.append(A.GaussNoise(std_range=(0.01, 0.04), p=noise))  # std as a fraction of 255
    return steps


def _seed_step(step: A.BasicTransform | A.BaseCompose, stream: np.random.SeedSequence) -> None:
    # A composite step (OneOf) hands its children its own seed; give each child a stream of its own.
    step.set_random_seed(int(stream.generate_state(1)[0]))
    children = step.transforms if isinstance(step, A.BaseCompose) else []
    for child, child_stream in zip(children, stream.spawn(len(children))):
        _seed_step(child, child_stream)


def normalize_image(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    mode: str = "max",
) -> torch.Tensor:
    """H×W×3 uint8/float image -> 3×H×W float32 tensor.

    ``mode="max"`` divides by the image's own maximum (the original U²-Net recipe; an all-black
    image stays zero instead of becoming NaN), ``"standard"`` divides by 255. Then per-channel
    ``(x - mean) / std``.
    """
    array = image.astype(np.float32)
    if mode == "max":
        peak = float(array.max())
        if peak > 1e-6:
            array /= peak
    elif mode == "standard":
        array /= 255.0
    else:
        _check_normalization(mode)
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


RESIZE_METHODS = (*_INTERPOLATIONS, "lanczos")


def resize_image(image: np.ndarray, size: int, method: str = "linear") -> np.ndarray:
    """An H×W×3 uint8 image resized to ``size``² (inference). ``linear`` / ``area`` / ``cubic``: OpenCV;
    ``lanczos``: Pillow's Lanczos, which widens its kernel when shrinking (anti-aliased), as rembg
    resizes."""
    if method == "lanczos":
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    if method not in _INTERPOLATIONS:
        raise ValueError(f"resize method must be one of {', '.join(RESIZE_METHODS)}, got {method!r}")
    return cv2.resize(image, (size, size), interpolation=_INTERPOLATIONS[method])


class SaliencyTransform:
    """Albumentations geometry on image and mask, then appearance changes on the image alone (see
    :func:`appearance_steps`), then normalisation and conversion to tensors.

    ``__call__(image, mask, seed)``: image H×W×3 uint8, mask H×W float32 in [0, 1]; returns
    (3×h×w float32, 1×h×w float32). With ``seed`` the random choices are those of that seed alone.
    """

    def __init__(
        self,
        image_size: int = 320,
        crop_size: int | None = None,
        hflip: float = 0.0,
        vflip: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalization: str = "max",
        interpolation: str = "linear",
        color_jitter: float = 0.0,
        blur: float = 0.0,
        noise: float = 0.0,
    ) -> None:
        _check_interpolation(interpolation)
        if crop_size is not None and crop_size > image_size:
            raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}")
        interp = _INTERPOLATIONS[interpolation]
        steps: list = [A.Resize(image_size, image_size, interpolation=interp, mask_interpolation=interp)]
        if crop_size is not None and crop_size < image_size:
            steps.append(A.RandomCrop(crop_size, crop_size))
        if hflip > 0:
            steps.append(A.HorizontalFlip(p=hflip))
        if vflip > 0:
            steps.append(A.VerticalFlip(p=vflip))
        self.geometry = A.Compose(steps)
        self.appearance = A.Compose(appearance_steps(color_jitter, blur, noise))
        self._seed(0)
        self.mean, self.std, self.normalization = tuple(mean), tuple(std), normalization
        self.output_size = crop_size or image_size

    def _seed(self, seed: int) -> None:
        # Compose.set_random_seed hands every step the same seed, so their draws would coincide: the
        # flip would be decided by the crop's offset (flipped crops all from one half of the image).
        # Each step gets its own stream, derived from ``seed``. The appearance steps take the streams
        # after the geometry's (spawned children do not depend on how many are spawned), so the
        # geometry is the same with or without them.
        self.geometry.set_random_seed(seed)
        self.appearance.set_random_seed(seed)
        steps = [*self.geometry.transforms, *self.appearance.transforms]
        for step, stream in zip(steps, np.random.SeedSequence(seed).spawn(len(steps))):
            _seed_step(step, stream)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self._seed(int(seed))
        out = self.geometry(image=image, mask=mask)
        if self.appearance.transforms:
            out["image"] = self.appearance(image=out["image"])["image"]
        image_t = normalize_image(out["image"], self.mean, self.std, self.normalization)
        mask_t = torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32)).clamp_(0, 1)[None]
        return image_t, mask_t

    def image_only(self, image: np.ndarray) -> torch.Tensor:
        """The image alone (inference): H×W×3 uint8 -> 3×S×S float32, as ``__call__`` makes it."""
        return normalize_image(self.geometry(image=image)["image"], self.mean, self.std, self.normalization)


def train_transform(
    image_size: int = 320, crop_size: int | None = 288, hflip: float = 0.5, vflip: float = 0.0, **kwargs
) -> SaliencyTransform:
    """The original training recipe (resize, random crop, flip, max-then-ImageNet normalisation)."""
    return SaliencyTransform(image_size, crop_size, hflip, vflip, **kwargs)


def eval_transform(image_size: int = 320, **kwargs) -> SaliencyTransform:
    """Validation / inference preprocessing: resize to ``image_size``² and normalise (no augmentation)."""
    return SaliencyTransform(image_size, None, 0.0, 0.0, **kwargs)


@dataclass(frozen=True)
class Preprocessing(Mapping):
    """How a model's input is made (validation and inference): resize an H×W×3 uint8 image to
    ``image_size``² (``interpolation``), scale it (``normalization``: ``"max"`` divides by the image's own
    maximum, the original recipe; ``"standard"`` by 255), then per channel ``(x - mean) / std``.

    The one definition of these settings: weights carry it (a pretrained tag's
    :class:`~u2net.models.PretrainedCfg`, our checkpoints as a plain dict, ONNX metadata) and
    :meth:`transform` applies it. It also reads as a read-only mapping of its fields (``p["image_size"]``,
    ``dict(p)``, ``**p``), as the plain dicts it replaces did.
    """

    image_size: int = 320
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    normalization: str = "max"
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        # Stored dicts and ONNX metadata hold lists; keep tuples (hashable, equal whatever the source).
        object.__setattr__(self, "image_size", int(self.image_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {self.mean} and {self.std}")
        _check_normalization(self.normalization)
        _check_interpolation(self.interpolation)

    @classmethod
    def from_dict(cls, values: Mapping | None = None) -> Preprocessing:
        """From a stored dict (or another ``Preprocessing``); missing keys take the defaults, unknown keys
        are refused."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(PREPROCESSING_KEYS))
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {', '.join(PREPROCESSING_KEYS)}")
        return cls(**values)

    @classmethod
    def from_metadata(cls, meta: Mapping) -> Preprocessing | None:
        """From decoded ONNX metadata (other entries ignored); ``None`` when it holds none of the keys."""
        found = {k: meta[k] for k in PREPROCESSING_KEYS if k in meta}
        return cls.from_dict(found) if found else None

    def to_dict(self) -> dict:
        """A plain dict with lists, as checkpoints (``weights_only`` loading) and ONNX metadata store it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.items()}

    def transform(self) -> SaliencyTransform:
        """The validation / inference transform: H×W×3 uint8 -> 3×S×S float32 (see :func:`eval_transform`)."""
        return eval_transform(**self)

    def __getitem__(self, key: str):
        if key not in PREPROCESSING_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(PREPROCESSING_KEYS)

    def __len__(self) -> int:
        return len(PREPROCESSING_KEYS)


PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))  # what a stored preprocessing dict may hold
