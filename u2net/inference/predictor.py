"""Mask prediction with exactly the validation preprocessing, on PyTorch or ONNX Runtime.

``Predictor.from_path(path)`` accepts our checkpoints, official ``.pth`` files, pretrained tags and
``.onnx`` files; ``predict(image)`` maps an H×W×3 uint8 image to an H×W float32 probability map at
the image's own size.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

# Nothing here imports torch (nor albumentations): the PyTorch backend and checkpoint reading are imported on
# the PyTorch path only, so that ONNX Runtime inference starts without them.
from ..data.preprocessing import Preprocessing
from ..errors import require_extra
from ..models.onnx_format import decode_metadata
from ..models.pretrained import PRETRAINED, bundled_weights_path, local_weights, pretrained_tag
from .onnx_backend import OnnxBackend
from .onnx_backend import symbolic_batch_dim as symbolic_batch_dim  # re-exported: its callers import it from here
from .refine import resize_probability
from .runtime import cpu_flags, int8_saturates, median_seconds, pick_providers

BACKENDS = ("auto", "pytorch", "onnxruntime")
# What Predictor.from_path computes in. auto: the bundled int8 file of a tag on ONNX Runtime's CPU provider (where it
# measured at least as good as rembg at lower cost, docs/quality.md) unless the CPU's int8 saturates, else fp32 on
# ONNX Runtime and PyTorch's own auto (bf16 where the hardware runs it fast); int8: that file, or an error;
# fp16/bf16: see ONNX_PRECISIONS.
PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")


def _onnx_file(path: str | os.PathLike) -> Path:
    """The ONNX file ``onnxruntime`` runs: the local file of a pretrained tag, or ``path`` itself."""
    tag = pretrained_tag(path)  # the one rule of tags and files, PyTorch's too
    if tag is None:
        if str(path).lower().endswith(".onnx"):
            return Path(path)
        raise ValueError(f"{path}: ONNX Runtime needs an .onnx file; use the PyTorch backend for this one")
    local = local_weights(tag)
    if local is None or local.suffix.lower() != ".onnx":
        found = f"its weights here are {local.name}" if local is not None else "its weights are not on this machine"
        raise ValueError(f"{path}: ONNX Runtime needs an .onnx file and {found}; use the PyTorch backend")
    return local


def _onnx_source(
    path: str | os.PathLike, tag: str | None, precision: str, providers: list[str] | None
) -> tuple[str, str, bool]:
    """(the ONNX file to run, ONNX Runtime's precision for it, whether that file is the tag's bundled int8 one):
    that int8 file for ``int8``, and for ``auto`` where ONNX Runtime runs on its CPU provider and the CPU's int8
    arithmetic does not saturate (:func:`~u2net.inference.runtime.int8_saturates`); else the weights' own file
    (``auto``: at fp32)."""
    int8 = bundled_weights_path(tag, int8=True) if tag is not None and precision in ("auto", "int8") else None
    if precision == "int8" and int8 is None:
        raise ValueError(
            f"{path}: no int8 file ships for it; make one (export_onnx.py weights=... int8=static) and give that file"
        )
    on_cpu = pick_providers(providers)[:1] == ["CPUExecutionProvider"]
    if int8 is not None and (precision == "int8" or (on_cpu and not int8_saturates(cpu_flags()))):
        return str(int8), "fp32", True  # the file is quantised: ONNX Runtime runs it as it is
    source = _onnx_file(path)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: ONNX file not found")
    return str(source), "fp32" if precision == "auto" else precision, False


def _has_local_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a pretrained tag whose weights on this machine (no download) are an ONNX file. Its
    digests are not checked here: whichever backend loads the file checks them, once."""
    tag = pretrained_tag(path)
    if tag is None:
        return False
    local = local_weights(tag, verify=False)
    return local is not None and local.suffix.lower() == ".onnx"


def _onnx_runtime_suits(device: str, precision: str) -> bool:
    """Whether ONNX Runtime runs a model where PyTorch with ``device`` and ``precision`` would: fp32 only (autocast
    is PyTorch's), on ``device="cpu"`` (on ONNX Runtime's CPU provider), and for ``device="auto"`` on ONNX
    Runtime's CUDA provider or on a machine without a GPU. Without torch imported, a GPU ``device="auto"`` could
    pick is guessed from the NVIDIA driver's device node and Apple silicon (then PyTorch is kept, if installed)."""
    if precision not in ("fp32", "auto", "int8"):
        return False
    if device == "cpu":
        return True  # Predictor.from_path then keeps ONNX Runtime on its CPU provider
    if "CUDAExecutionProvider" in pick_providers():
        return device == "auto"  # ONNX Runtime's first provider then is CUDA, as PyTorch's first choice
    if device == "auto" and not _torch_installed():
        return True  # the GPU PyTorch would pick is out of reach without it (u2net's light install)
    apple_silicon = sys.platform == "darwin" and platform.machine() == "arm64"
    return device == "auto" and not (os.path.exists("/dev/nvidiactl") or apple_silicon)


def _torch_installed() -> bool:
    """Whether PyTorch is installed (the ``train`` extra), found without importing it."""
    return importlib.util.find_spec("torch") is not None


@runtime_checkable
class InferenceBackend(Protocol):
    """What :class:`Predictor` and the code around it use of a backend: PyTorch's
    (:class:`~u2net.inference.torch_backend.TorchBackend`) and ONNX Runtime's
    (:class:`~u2net.inference.onnx_backend.OnnxBackend`) both have it."""

    fixed_size: int | None  # the square input side the model requires, or None: any size
    max_batch: int | None  # most images the model runs at once (a call splits larger batches), or None: any
    precision: str  # what it computes in, resolved (never "auto")

    @property
    def on_gpu(self) -> bool:
        """Whether it computes on a GPU (decides, e.g., how many images to batch)."""
        ...

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N×3×S×S float32 normalised images -> N×S×S float32 probabilities of the fused output."""
        ...


@dataclass
class ModelInfo:
    """What a report says about the model being scored: its name, weights (``source``), backend and size, and
    where and how it runs: ``device`` on PyTorch, ``providers`` (in use, first the one that computes) on ONNX
    Runtime, ``precision`` on both; ``None`` where not known or not applicable."""

    name: str
    source: str
    backend: str
    parameters: int | None = None
    size_mb: float | None = None
    device: str | None = None
    providers: list[str] | None = None
    precision: str | None = None

    @property
    def extra(self) -> dict[str, object]:
        """The runtime facts that are set (``device``, ``providers``, ``precision``) as one dict, for the reports
        and the service that read them so: a new dict each time, made from the fields."""
        facts = {
            "device": self.device,
            "providers": list(self.providers) if self.providers is not None else None,
            "precision": self.precision,
        }
        return {key: value for key, value in facts.items() if value is not None}


class Predictor:
    """Preprocess like validation, run a backend, resize the fused probability map back.

    ``preprocessing`` is a :class:`~u2net.data.preprocessing.Preprocessing` (or a dict of some of its fields, the
    rest default): what training validated with, read from the weights by :meth:`from_path`. A backend with a
    fixed input size sets ``image_size``.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        preprocessing: Preprocessing | Mapping | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        self.backend = backend
        preprocessing = Preprocessing.from_dict(preprocessing)
        if backend.fixed_size is not None:
            preprocessing = replace(preprocessing, image_size=backend.fixed_size)
        self.preprocessing = preprocessing
        self.info = info or ModelInfo("unknown", "", type(backend).__name__)

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        precision: str = "fp32",
        image_size: int | None = None,
        backend: str = "auto",
        providers: list[str] | None = None,
    ) -> Predictor:
        """A predictor for a checkpoint, official ``.pth``, pretrained tag or ``.onnx`` file (read once).

        ``backend``: ``auto`` runs an ``.onnx`` path on ONNX Runtime, and a tag whose file here is ONNX (the
        bundled ``u2netp.duts``) too where ONNX Runtime would use the same device as PyTorch (fp32, and a CPU
        or ONNX Runtime's CUDA provider; see :func:`_onnx_runtime_suits`); anything else on PyTorch;
        ``pytorch`` always PyTorch (an ``.onnx`` file is imported);
        ``onnxruntime`` always ONNX Runtime (an ``.onnx`` path, or a tag whose file here is ONNX, as the
        bundled ``u2netp.duts``; never a download, which may bring a ``.pth``). The preprocessing is the
        weights' own (a tag's catalogue entry, a checkpoint's stored one, an ONNX file's metadata), else the
        defaults; ``image_size`` overrides its size. ``providers``: ONNX Runtime execution providers in order of
        preference (default :data:`~u2net.inference.runtime.DEFAULT_PROVIDERS`, or the CPU's alone for
        ``device="cpu"``; those this ONNX Runtime lacks are passed over), for ONNX Runtime only. ``precision``:
        PyTorch's (``fp32``, ``bf16``, ``fp16`` on CUDA, ``auto``), or on ONNX Runtime ``fp32``, and ``fp16`` or
        ``bf16`` on its OpenVINO provider.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        # the cheap test first: only a tag's local ONNX file needs ONNX Runtime imported to decide
        if backend == "auto" and _has_local_onnx(path) and _onnx_runtime_suits(device, precision):
            backend = "onnxruntime"  # the same weights, about twice as fast on a CPU as PyTorch, and no torch import
        tag = pretrained_tag(path)  # one rule for both backends: a tag means the tag, ./name a file
        overrides = {"image_size": image_size} if image_size else {}
        onnx_path = tag is None and str(path).lower().endswith(".onnx")
        if backend == "onnxruntime" or (backend == "auto" and onnx_path):
            if providers is None and device == "cpu":
                providers = ["CPUExecutionProvider"]  # not CUDA first, where onnxruntime-gpu has it
            source, precision, int8 = _onnx_source(path, tag, precision, providers)
            backend = OnnxBackend(source, providers, precision)
            if image_size and backend.fixed_size and image_size != backend.fixed_size:
                raise ValueError(
                    f"{source}: this ONNX file's input is fixed at {backend.fixed_size}x{backend.fixed_size}, so an "
                    f"input size of {image_size} cannot change it; export the model at that size, or run it on PyTorch"
                )
            meta = backend.metadata
            # a tag's file may name no preprocessing (rembg's do not): its catalogue entry does
            fallback = PRETRAINED[tag].preprocessing if tag is not None else Preprocessing()
            preprocessing = Preprocessing.from_metadata(decode_metadata(meta)) or fallback
            info = ModelInfo(
                meta.get("model_name", Path(source).stem),
                source,
                "onnxruntime",
                size_mb=_file_mb(source),
                providers=list(backend.providers),
                precision="int8" if int8 else backend.precision,
            )
            return cls(backend, replace(preprocessing, **overrides), info)

        source = tag if tag is not None else path  # a path keeps its type: a Path named like a tag names the file
        if providers:
            raise ValueError(f"{source}: runs on PyTorch; execution providers are for ONNX Runtime (an .onnx model)")
        if precision == "int8":
            raise ValueError(f"{source}: int8 runs on ONNX Runtime, on an int8 .onnx file (export_onnx.py int8=static)")
        require_extra("the PyTorch backend (checkpoints, .pth files)", "train", torch="PyTorch")
        from ..models.checkpoint import load_checkpoint
        from .torch_backend import TorchBackend

        checkpoint = load_checkpoint(source)
        model = checkpoint.build_model()
        preprocessing = checkpoint.preprocessing or Preprocessing()
        parameters = sum(p.numel() for p in model.parameters())
        # The weights themselves (float32 state dict), not the file: checkpoints also hold optimizer state.
        size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
        backend = TorchBackend(model, device, precision)
        name = getattr(model, "model_name", "u2net")  # models built outside the registry may lack it
        info = ModelInfo(
            name, str(source), "pytorch", parameters, size, device=str(backend.device), precision=backend.precision
        )
        return cls(backend, replace(preprocessing, **overrides), info)

    @property
    def input_size(self) -> int:
        return self.preprocessing.image_size

    def preprocess(self, image: np.ndarray, resize: str | None = None) -> np.ndarray:
        """H×W×3 uint8 -> 3×S×S float32, exactly as in validation; ``resize`` (one of
        :data:`~u2net.data.preprocessing.RESIZE_METHODS`) resizes another way, the rest unchanged."""
        return self.preprocessing.apply(image, resize)

    def predict_batch(self, batch: np.ndarray, sizes: list[tuple[int, int]] | None = None) -> list[np.ndarray]:
        """N×3×S×S preprocessed images -> N probability maps, each resized to ``sizes[i]`` = (h, w)."""
        probs = self.backend(np.ascontiguousarray(batch, dtype=np.float32))
        if sizes is None:
            return list(probs)
        return [resize_probability(p, size) for p, size in zip(probs, sizes)]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """H×W×3 uint8 image -> H×W float32 probabilities in [0, 1]."""
        return self.predict_batch(self.preprocess(image)[None], [image.shape[:2]])[0]

    def measure_latency(
        self, runs: int = 10, warmup: int = 2, batch_size: int = 1, size: int | None = None
    ) -> dict[str, float]:
        """Milliseconds per image of the forward pass at ``size``² (default: the input size) in
        batches of ``batch_size`` (median of ``runs``), images per second, and the size used (a fixed-size
        model's own)."""
        size = self.backend.fixed_size or size or self.input_size
        x = np.random.default_rng(0).standard_normal((batch_size, 3, size, size))
        x = x.astype(np.float32)
        seconds = median_seconds(lambda: self.backend(x), runs, warmup)
        return {"latency_ms": 1000 * seconds / batch_size, "images_per_s": batch_size / seconds, "size": size}


def _file_mb(path: str) -> float:
    return Path(path).stat().st_size / 2**20
