"""ONNX Runtime sessions and latency timing: one way to do each, for inference and export alike."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_PROVIDERS", "median_seconds", "onnx_session", "pick_providers", "provider_names"]

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before the import: ONNX Runtime reads it then
    import onnxruntime

    return onnxruntime


def provider_names(names: Sequence[str]) -> list[str]:
    """ONNX Runtime's full provider names for ``names`` (``CUDA`` or ``CUDAExecutionProvider``, any case), in
    order, whether or not this ONNX Runtime has them; ``ValueError(name)`` for a name it does not know."""
    known = {name.lower(): name for name in _ort().get_all_providers()}
    full = []
    for name in names:
        key = name.lower() if name.lower().endswith("executionprovider") else f"{name.lower()}executionprovider"
        if key not in known:
            raise ValueError(name)
        full.append(known[key])
    return full


def pick_providers(providers: Sequence[str] | None = None) -> list[str]:
    """``providers`` (default :data:`DEFAULT_PROVIDERS`, in order of preference) that this ONNX Runtime has."""
    available = _ort().get_available_providers()
    return [p for p in providers or DEFAULT_PROVIDERS if p in available]


def onnx_session(
    model: str | os.PathLike | bytes,
    providers: Sequence[str] | None = None,
    *,
    fixed_dims: Mapping[str, int] | None = None,
    spinning: bool = True,
    quiet: bool = False,
):
    """An ONNX Runtime ``InferenceSession`` for a file (path or bytes) on :func:`pick_providers` ``(providers)``.

    ``fixed_dims`` fixes symbolic dimensions by name (e.g. ``{"batch": 1}``). ``spinning=False`` stops idle
    intra-op threads from busy-waiting, which would starve PyTorch threads run in between. ``quiet`` logs
    errors only.
    """
    ort = _ort()
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=pick_providers(providers))


def median_seconds(fn: Callable[[], object], runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of ``runs`` calls of ``fn`` (at least one), after ``warmup`` untimed calls.

    The median, not the mean: it resists other processes' bursts.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))
