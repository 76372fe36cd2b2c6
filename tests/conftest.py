"""Shared fixtures: a tiny synthetic dataset and the reference files of the original U²-Net."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A 24 + 8 image synthetic set (64–96 px) in the DUTS layout."""
    from u2net.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "synthetic"
    return generate_synthetic_dataset(root, num_train=24, num_val=8, seed=1, min_size=64, max_size=96, progress=False)
