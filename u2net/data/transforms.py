"""Preprocessing and augmentation.

The default training recipe is the original one: resize to 320×320, random 288×288 crop, random
flip, then the original normalisation (divide by the image's own maximum, then ImageNet mean/std)
so that the official weights see what they were trained on. Validation and inference: resize only.

Note: the original code flips with ``image[::-1]``, i.e. *vertically*; we default to horizontal
flips (``hflip=0.5``) and offer ``vflip`` for exact reproduction.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..models.pretrained import IMAGENET_MEAN, IMAGENET_STD

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}


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
        raise ValueError(f"normalization must be 'max' or 'standard', got {mode!r}")
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class SaliencyTransform:
    """Albumentations geometry on image and mask, then normalisation and conversion to tensors.

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
    ) -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
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
        self._seed_geometry(0)
        self.mean, self.std, self.normalization = tuple(mean), tuple(std), normalization
        self.output_size = crop_size or image_size

    def _seed_geometry(self, seed: int) -> None:
        # Compose.set_random_seed hands every step the same seed, so their draws would coincide: the
        # flip would be decided by the crop's offset (flipped crops all from one half of the image).
        # Each step gets its own stream, derived from ``seed``.
        self.geometry.set_random_seed(seed)
        streams = np.random.SeedSequence(seed).spawn(len(self.geometry.transforms))
        for step, stream in zip(self.geometry.transforms, streams):
            step.set_random_seed(int(stream.generate_state(1)[0]))

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if seed is not None:
            self._seed_geometry(int(seed))
        out = self.geometry(image=image, mask=mask)
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
    """Validation / inference preprocessing: resize to ``image_size``² and normalise."""
    return SaliencyTransform(image_size, None, 0.0, 0.0, **kwargs)
