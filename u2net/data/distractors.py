"""Hard negatives for training: another sample's subject pasted *behind* this one's.

A general salient-object model used on photos of people keeps the bystanders behind the subject (its worst
photos of people). Pasting a second training subject into the background, under the first subject and outside
its mask, shows the model a salient thing that is not the target: the mask stays the first subject's. The
pasted subject is scaled to 35–90 % of the photo's height (bystanders stand further back), mirrored half the
time and placed anywhere across the width, partly out of frame if it falls so.

Measured on Clothing Co-Parsing people (``data.distractors=0.5`` in ``experiment=person``): worse, since that
set's failures are carried things rather than bystanders (docs/models/u2netp.person.md); off by default.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PASTE_HEIGHT = (0.35, 0.9)  # the pasted subject's height, as a share of the photo's
MIN_SUBJECT_PIXELS = 16  # a mask with fewer foreground pixels than this is not worth pasting


def _subject_cutout(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The bounding box of ``mask`` (H×W float32 in [0, 1], foreground ≥ 0.5) cut from both, or None when
    the mask is (nearly) empty."""
    rows, cols = np.nonzero(mask >= 0.5)
    if rows.size < MIN_SUBJECT_PIXELS:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    return image[top:bottom, left:right], mask[top:bottom, left:right]


def paste_behind(
    image: np.ndarray, mask: np.ndarray, other_image: np.ndarray, other_mask: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``image`` (H×W×3 uint8) with ``other_image``'s subject (by ``other_mask``, h×w float32 in [0, 1])
    pasted behind ``image``'s own subject (by ``mask``, H×W float32): H×W×3 uint8. ``mask`` is unchanged by
    this, and stays the target. An empty ``other_mask`` returns ``image`` as it was."""
    cutout = _subject_cutout(other_image, other_mask)
    if cutout is None:
        return image
    patch, alpha = cutout
    height, width = image.shape[:2]
    share = rng.uniform(*PASTE_HEIGHT)
    scale = share * height / patch.shape[0]
    scale = min(scale, width / patch.shape[1])  # never wider than the photo
    size = (max(1, round(patch.shape[0] * scale)), max(1, round(patch.shape[1] * scale)))
    # Pillow's bilinear filter widens with the shrink (anti-aliased): aliased edges would tell the model which
    # subject was pasted.
    patch = np.asarray(Image.fromarray(patch).resize(size[::-1], Image.BILINEAR), dtype=np.float32)
    alpha = np.asarray(Image.fromarray(alpha.astype(np.float32), "F").resize(size[::-1], Image.BILINEAR))
    alpha = np.clip(alpha, 0.0, 1.0)
    if rng.random() < 0.5:
        patch, alpha = patch[:, ::-1], alpha[:, ::-1]
    ph, pw = size
    # Anywhere across the width (up to a third out of frame); the smaller, the further back, so the higher its
    # feet stand (from about 2/3 of the height at the smallest to the bottom at the largest).
    left = int(rng.integers(-pw // 3, width - 2 * pw // 3 + 1))
    bottom = height * (0.45 + 0.6 * share + rng.uniform(-0.05, 0.05))
    top = round(min(bottom, height) - ph)
    y0, y1, x0, x1 = max(top, 0), min(top + ph, height), max(left, 0), min(left + pw, width)
    if y1 <= y0 or x1 <= x0:
        return image
    region = (slice(y0, y1), slice(x0, x1))
    patch_region = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    # Behind the subject: the pasted subject shows only where this photo's own subject does not.
    weight = (alpha[patch_region] * (1.0 - np.clip(mask[region], 0.0, 1.0)))[..., None]
    out = image.astype(np.float32)
    out[region] = weight * patch[patch_region] + (1.0 - weight) * out[region]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
