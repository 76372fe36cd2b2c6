"""The model-input preprocessing of validation and inference, in NumPy: :class:`Preprocessing` (the settings
that weights carry), :func:`resize_image` and :func:`normalize_array`.

Kept free of torch and albumentations (NumPy and Pillow only; OpenCV only for the area and bicubic resizes)
so that ONNX Runtime inference, the pretrained catalogue and the ``u2net`` command start without importing
them; the augmentation and the tensors of training live in :mod:`u2net.data.transforms`, which builds on
this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from PIL import Image

from .imageops import opencv, resize_linear

# ImageNet statistics: what the official weights (and every U²-Net we know of) were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# each interpolation's OpenCV flag: "linear" is ours (imageops.resize_linear, the same to the bit), the others
# OpenCV's, imported when asked for
_INTERPOLATIONS = {"linear": "INTER_LINEAR", "area": "INTER_AREA", "cubic": "INTER_CUBIC"}
NORMALIZATIONS = ("max", "standard")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be 'max' or 'standard', got {normalization!r}")


def normalize_array(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    mode: str = "max",
) -> np.ndarray:
    """H×W×3 uint8/float image -> 3×H×W float32 array (C-contiguous).

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
    return np.ascontiguousarray(array.transpose(2, 0, 1))


RESIZE_METHODS = (*_INTERPOLATIONS, "lanczos")


def resize_image(image: np.ndarray, size: int, method: str = "linear") -> np.ndarray:
    """An H×W×3 uint8 image resized to ``size``² (inference). ``linear`` / ``area`` / ``cubic``: OpenCV's
    (``linear`` reproduced in NumPy; ``area`` and ``cubic`` need OpenCV, the ``opencv`` extra); ``lanczos``:
    Pillow's Lanczos, which widens its kernel when shrinking (anti-aliased), as rembg resizes."""
    if method == "lanczos":
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))
    if method not in _INTERPOLATIONS:
        raise ValueError(f"resize method must be one of {', '.join(RESIZE_METHODS)}, got {method!r}")
    if method == "linear":
        return resize_linear(image, (size, size))
    cv2 = opencv(f"the {method!r} resize")
    return cv2.resize(image, (size, size), interpolation=getattr(cv2, _INTERPOLATIONS[method]))


@dataclass(frozen=True)
class Preprocessing(Mapping):
    """How a model's input is made (validation and inference): resize an H×W×3 uint8 image to
    ``image_size``² (``interpolation``), scale it (``normalization``: ``"max"`` divides by the image's own
    maximum, the original recipe; ``"standard"`` by 255), then per channel ``(x - mean) / std``.

    The one definition of these settings: weights carry it (a pretrained tag's
    :class:`~u2net.models.PretrainedCfg`, our checkpoints as a plain dict, ONNX metadata); :meth:`apply` applies
    it in NumPy, :func:`~u2net.data.transforms.eval_transform` (``eval_transform(**p)``) with tensors and a
    mask. It also reads as a read-only mapping of its fields (``p["image_size"]``, ``dict(p)``, ``**p``), as
    the plain dicts it replaces did.
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

    def apply(self, image: np.ndarray, resize: str | None = None) -> np.ndarray:
        """H×W×3 uint8 -> 3×S×S float32: the model input, as validation makes it. ``resize`` (one of
        :data:`RESIZE_METHODS`) resizes another way than ``interpolation``, the rest unchanged."""
        resized = resize_image(image, self.image_size, resize or self.interpolation)
        return normalize_array(resized, self.mean, self.std, self.normalization)

    def __getitem__(self, key: str):
        if key not in PREPROCESSING_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(PREPROCESSING_KEYS)

    def __len__(self) -> int:
        return len(PREPROCESSING_KEYS)


PREPROCESSING_KEYS = tuple(f.name for f in fields(Preprocessing))  # what a stored preprocessing dict may hold
