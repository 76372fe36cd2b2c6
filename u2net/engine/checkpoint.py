"""Writing checkpoints (the format is :class:`u2net.models.Checkpoint`'s) and the RNG states they carry."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import reason
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


def _numpy_state(np_state: Mapping) -> tuple:
    """NumPy's legacy state tuple from :func:`rng_state`'s dict."""
    keys = np_state["keys"]
    if not isinstance(keys, torch.Tensor):
        raise TypeError(f"keys are a {type(keys).__name__}, not a tensor")
    return ("MT19937", keys.numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"],
            np_state["cached_gaussian"])  # fmt: skip


def check_rng_state(state: object) -> None:
    """Raise ``ValueError`` saying which part of a stored :func:`rng_state` cannot be restored, restoring
    nothing: each state is tried on a private generator, the global ones stay as they are."""
    if not isinstance(state, Mapping):
        raise ValueError(f"its RNG state is a {type(state).__name__}, not a dict")
    missing = [key for key in ("python", "numpy", "torch") if key not in state]
    if missing:
        raise ValueError(f"its RNG state lacks {', '.join(missing)}")
    trials = (
        ("Python", lambda: random.Random().setstate(state["python"])),
        ("NumPy", lambda: np.random.RandomState().set_state(_numpy_state(state["numpy"]))),
        ("torch", lambda: torch.Generator().set_state(state["torch"])),
    )
    for what, trial in trials:
        try:
            trial()
        except Exception as exc:  # TypeError, ValueError, KeyError, RuntimeError: whatever the damage
            raise ValueError(f"its {what} RNG state cannot be restored ({reason(exc)})") from None
    cuda = state.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.ndim == 1 for t in cuda
    ):
        raise ValueError("its CUDA RNG states are not a list of byte tensors")


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (see :func:`check_rng_state` to check it first)."""
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint from a machine with another number of GPUs restores what both have.
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)
