"""A confidence score and QA flags for one cut-out's mask, so that a batch can be triaged without
looking at every output: which masks are probably wrong, and why.

Flags (names as written in CSVs and headers):

- ``empty``: nothing is foreground (no pixel reaches alpha 128, or less than 0.1 % of the photo);
- ``touches_frame``: the subject runs into the photo's border (over 5 % of the border's pixels are
  foreground): probably cut off, or the background was taken for the subject;
- ``several_components``: more than one sizeable region (each at least 5 % of the largest);
- ``uncertain_band``: the band of uncertain alpha (between 10 % and 90 %) is wide for the subject's size
  (over 25 % of the foreground's area): soft or unsure edges.

``confidence`` (0–1) is one minus the uncertain share: the pixels with alpha between 10 % and 90 %, as
a fraction of the foreground plus those pixels; an empty mask has confidence 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["QA_FLAGS", "MaskQuality", "assess_mask"]

QA_FLAGS = ("empty", "touches_frame", "several_components", "uncertain_band")
MIN_FOREGROUND = 0.001  # of the photo
BORDER_SHARE = 0.05  # of the border's pixels
COMPONENT_SHARE = 0.05  # of the largest component
UNCERTAIN_SHARE = 0.25  # of the foreground


@dataclass(frozen=True)
class MaskQuality:
    """The assessment of one mask: ``confidence`` in [0, 1] and the :data:`QA_FLAGS` raised."""

    confidence: float
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.flags

    def header_value(self) -> str:
        """The flags as an HTTP header / CSV cell: comma-separated, ``ok`` when there are none."""
        return ",".join(self.flags) or "ok"


def assess_mask(alpha: np.ndarray) -> MaskQuality:
    """Assess an H×W uint8 alpha mask (see the module docstring for what each flag means)."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2 or alpha.dtype != np.uint8:
        raise ValueError(f"assess_mask needs an H×W uint8 mask, got {alpha.dtype} of shape {alpha.shape}")
    foreground = alpha >= 128
    area = int(foreground.sum())
    if area == 0 or area < MIN_FOREGROUND * alpha.size:
        return MaskQuality(0.0, ("empty",))
    uncertain = int(((alpha > 25) & (alpha < 230)).sum())
    confidence = 1.0 - uncertain / (area + uncertain)
    flags = []
    border = np.concatenate([foreground[0], foreground[-1], foreground[1:-1, 0], foreground[1:-1, -1]])
    if border.mean() > BORDER_SHARE:
        flags.append("touches_frame")
    count, _, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    if (sizes >= COMPONENT_SHARE * sizes.max()).sum() > 1:
        flags.append("several_components")
    if uncertain > UNCERTAIN_SHARE * area:
        flags.append("uncertain_band")
    return MaskQuality(round(confidence, 4), tuple(flags))
