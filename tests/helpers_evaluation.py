"""Helpers of the evaluation tests: evaluate.py in a subprocess, and soft mattes with their trimaps."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from .conftest import REPO


def _evaluate(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "evaluate.py"), f"hydra.run.dir={tmp_path / 'eval'}", "progress=false"]
    return subprocess.run([*command, *overrides], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def soft_disc(size: int = 64, radius: float = 18.0, width: float = 6.0) -> np.ndarray:
    """A disc whose edge ramps linearly from 1 to 0 over ``width`` pixels (a soft, hair-like edge)."""
    yy, xx = np.mgrid[:size, :size]
    distance = np.hypot(yy - size / 2, xx - size / 2)
    return np.clip((radius + width / 2 - distance) / width, 0.0, 1.0)


def trimap_of(alpha: np.ndarray) -> np.ndarray:
    trimap = np.full(alpha.shape, 128, np.uint8)
    trimap[alpha == 0] = 0
    trimap[alpha == 1] = 255
    return trimap
