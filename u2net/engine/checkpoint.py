"""Writing checkpoints (the format is :class:`u2net.models.Checkpoint`'s) and the RNG states they carry."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..models.checkpoint import Checkpoint


def save_checkpoint(state: Checkpoint | Mapping, path: str | os.PathLike) -> Path:
    """Write a :class:`~u2net.models.Checkpoint` (or its stored dict) to ``path`` atomically: see
    :meth:`Checkpoint.save <u2net.models.Checkpoint.save>`."""
    checkpoint = state if isinstance(state, Checkpoint) else Checkpoint.from_dict(state, source=str(path))
    return checkpoint.save(path)


def rng_state() -> dict:
    """The global RNG states (Python, NumPy, torch CPU and CUDA) in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint from a machine with another number of GPUs restores what both have.
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
