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

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

# The inference side (settings, resizing, normalisation) is torch-free, in .preprocessing; re-exported here.
from .preprocessing import (
    _INTERPOLATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    PREPROCESSING_KEYS,
    RESIZE_METHODS,
    Preprocessing,
    _check_interpolation,
    normalize_array,
    resize_image,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "PREPROCESSING_KEYS",
    "RESIZE_METHODS",
    "Preprocessing",
    "SaliencyTransform",
    "appearance_steps",
    "eval_transform",
    "normalize_array",
    "normalize_image",
    "resize_image",
    "train_transform",
]


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
    """H×W×3 uint8/float image -> 3×H×W float32 tensor: :func:`~u2net.data.preprocessing.normalize_array`'s
    array, as a tensor."""
    return torch.from_numpy(normalize_array(image, mean, std, mode))


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
        interp = getattr(cv2, _INTERPOLATIONS[interpolation])  # training has OpenCV: albumentations needs it
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
