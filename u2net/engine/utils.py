"""Seeding, and the device and precision helpers under their old names.

The device and precision helpers live in :mod:`u2net.device` (shared with PyTorch inference); they are
re-exported here because the trainer, ``train.py``, the benchmarks and tests still import them from here.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..device import PRECISIONS, autocast_context, pick_device, resolve_precision

__all__ = ["PRECISIONS", "autocast_context", "pick_device", "resolve_precision", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
