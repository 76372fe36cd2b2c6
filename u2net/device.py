"""Where PyTorch runs and at what precision: device choice and autocast, for training and PyTorch inference alike.

Its own module, below both ``engine`` and ``inference``, so that prediction does not depend on the training
package. It imports torch and nothing of ours.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast_context", "pick_device", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")


def pick_device(requested: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to ``torch.device``."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {requested!r} requested but CUDA is not available; "
                "use the CPU (trainer.device=cpu, --device cpu)"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` becomes bf16 where the hardware runs it fast (CUDA with bf16 support, CPUs with
    AVX512-BF16/AMX through oneDNN) and fp32 elsewhere; other values are returned unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
        except (AttributeError, RuntimeError):
            return "fp32"
    return "fp32"


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision``: bf16 on CPU and GPU, fp16 on CUDA only."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision=fp16 needs CUDA (device is {device.type}); use bf16 instead")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
