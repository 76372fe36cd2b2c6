"""ONNX Runtime sessions and latency timing: one way to do each, for inference and export alike."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_PROVIDERS",
    "ONNX_PRECISIONS",
    "cpu_flags",
    "int8_saturates",
    "median_seconds",
    "onnx_session",
    "pick_providers",
    "precision_warning",
    "provider_names",
    "provider_options",
]

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
OPENVINO = "OpenVINOExecutionProvider"
# What an fp32 ONNX file can run at: fp32 everywhere; fp16 and bf16 through OpenVINO's inference precision, which
# its CPU plugin offers where the hardware has them (fp16: AVX512-FP16, as Intel Xeon Sapphire Rapids and later).
ONNX_PRECISIONS = ("fp32", "fp16", "bf16")
_OPENVINO_HINTS = {"fp16": "f16", "bf16": "bf16"}  # fp32: no hint (the provider's CPU default)
# CPU flags (as /proc/cpuinfo names them, x86 then ARM) that compute each reduced precision natively. Without them
# OpenVINO's CPU plugin ignores the f16 hint and runs fp32 (measured on an Ice Lake Xeon: same time, same output)
# and emulates bf16 (2.7x slower than fp32 there).
_NATIVE_CPU_FLAGS = {  # precision: (flags, what OpenVINO does without any of them)
    "fp16": (("avx512_fp16", "amx_fp16", "asimdhp"), "OpenVINO computes in fp32, no faster"),
    "bf16": (("avx512_bf16", "amx_bf16", "bf16"), "OpenVINO emulates it, slower than fp32"),
}


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


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    """This CPU's feature flags, from the first ``flags`` (x86) or ``Features`` (ARM) line of Linux's
    ``cpuinfo``; ``None`` where that file is missing or has no such line (other systems: unknown)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        return None
    return None


# x86 instructions that multiply 8-bit integers without the 16-bit saturation of AVX2's VPMADDUBSW, which ONNX
# Runtime's U8S8 kernels use otherwise (its quantization docs). Measured (docs/performance.md): the bundled int8 files
# on a 2-core AMD EPYC with AVX2 alone, MAE +18 % (person, CCP) and +7 % (general, ECSSD) against fp32; on an Ice
# Lake Xeon with AVX-512 VNNI, within 0.0001.
INT8_EXACT_X86_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_saturates(flags: frozenset[str] | None) -> bool:
    """Whether ONNX Runtime's int8 kernels lose accuracy on a CPU with feature ``flags`` (see :func:`cpu_flags`): an
    x86 CPU (it lists ``sse2``) without any of :data:`INT8_EXACT_X86_FLAGS`. ARM and unknown CPUs: ``False``."""
    return flags is not None and "sse2" in flags and not flags.intersection(INT8_EXACT_X86_FLAGS)


def precision_warning(precision: str, flags: frozenset[str] | None) -> str | None:
    """Why ``precision`` on OpenVINO's CPU device brings no speed on a CPU with feature ``flags`` (see
    :func:`cpu_flags`), or ``None``: fp32, a native precision, or flags unknown."""
    wanted, without = _NATIVE_CPU_FLAGS.get(precision, ((), ""))
    if not wanted or flags is None or flags.intersection(wanted):
        return None
    x86_names = " or ".join(flag.upper().replace("_", "-") for flag in wanted[:2])
    return (
        f"precision {precision}: this CPU has no {x86_names}, so "
        f"{without}; an int8 file is the faster route here (export_onnx.py ... int8=static)"
    )


def provider_options(providers: Sequence[str], precision: str = "fp32") -> list[dict[str, str]]:
    """ONNX Runtime's options for each of ``providers`` (full names) that make it compute at ``precision``
    (one of :data:`ONNX_PRECISIONS`). fp32 needs none; fp16 and bf16 set OpenVINO's inference precision on
    its CPU device, so ``ValueError`` where OpenVINO is not among ``providers``."""
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"precision on ONNX Runtime must be one of {', '.join(ONNX_PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return [{} for _ in providers]
    if OPENVINO not in providers:
        raise ValueError(
            f"precision {precision} on ONNX Runtime needs its OpenVINO execution provider (pip install "
            f"onnxruntime-openvino; providers=['OpenVINOExecutionProvider']), not {', '.join(providers) or 'none'}"
        )
    hint = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": _OPENVINO_HINTS[precision]}})
    return [{"load_config": hint} if name == OPENVINO else {} for name in providers]


def onnx_session(
    model: str | os.PathLike | bytes,
    providers: Sequence[str] | None = None,
    *,
    precision: str = "fp32",
    fixed_dims: Mapping[str, int] | None = None,
    spinning: bool = True,
    quiet: bool = False,
    bare: bool = False,
    data_folder: str | os.PathLike | None = None,
):
    """An ONNX Runtime ``InferenceSession`` for a file (path or bytes) on :func:`pick_providers` ``(providers)``.

    ``precision``: see :func:`provider_options`. ``fixed_dims`` fixes symbolic dimensions by name (e.g.
    ``{"batch": 1}``). ``spinning=False`` stops idle intra-op threads from busy-waiting, which would starve
    PyTorch threads run in between. ``quiet`` logs errors only. ``bare``: a session only to read the model's
    inputs and metadata: no graph optimisation, one thread (a fifth to a third of a full session's start-up).
    ``data_folder``: where the external data (weights in files beside the model) of a model given as bytes
    lies (ONNX Runtime 1.21 and later, the least this package installs).
    """
    ort = _ort()
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if bare:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # A pool of threads doubled its start-up (the bundled files); weights repacked for kernels that never run
        # cost a fifth of it (a 176 MB U²-Net).
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.disable_prepacking", "1")
    if data_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(data_folder))
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for name, value in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(name, value)
    source = model if isinstance(model, bytes) else str(model)
    picked = pick_providers(providers)
    if OPENVINO in picked and (message := precision_warning(precision, cpu_flags())):
        warnings.warn(message, stacklevel=2)
    return ort.InferenceSession(source, options, providers=picked, provider_options=provider_options(picked, precision))


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
