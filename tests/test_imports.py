"""What importing costs: ONNX Runtime inference (the ``u2net`` command's default) imports neither torch nor
albumentations, and the public names of the lazy packages still resolve to what they did.

The import checks run in a fresh interpreter each (``sys.executable -c``): this process has torch already.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from u2net.inference.predictor import _onnx_runtime_suits

from .conftest import REPO

BUNDLED_ONNX = REPO / "u2net" / "models" / "bundled" / "u2netp.onnx"
INFERENCE_DIR = REPO / "u2net" / "inference"
HEAVY = ("torch", "albumentations", "torchvision")

# Each snippet ends by printing the heavy modules it imported, as JSON, on its last line.
_REPORT = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def _run(code: str) -> tuple[list[str], str]:
    """Run ``code`` then the heavy-module report in a fresh interpreter; (heavy modules imported, stdout)."""
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_REPORT}"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


@pytest.mark.subprocess
def test_cli_onnx_removal_imports_neither_torch_nor_albumentations(tmp_path: Path) -> None:
    src, dst = tmp_path / "photo.jpg", tmp_path / "out.png"
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src)
    explicit = ["remove", str(src), str(dst), "--model", str(BUNDLED_ONNX), "--backend", "onnxruntime", "-q"]
    heavy, _ = _run(f"from u2net.cli import main\nassert main({explicit!r}) == 0")
    assert heavy == []
    # The default model (the bundled tag) with the default backend: ONNX Runtime where it runs on the same device
    # as PyTorch would (always on a CPU-only machine, as CI's).
    default = ["remove", str(src), str(dst), "-q"]
    heavy, _ = _run(f"from u2net.cli import main\nassert main({default!r}) == 0")
    assert heavy == ([] if _onnx_runtime_suits("auto", "fp32") else ["torch"])
    with Image.open(dst) as out:
        assert out.mode == "RGBA" and out.size == (64, 48)


@pytest.mark.subprocess
def test_cli_help_and_the_onnx_predictor_import_neither() -> None:
    help_code = "from u2net.cli import build_parser\nbuild_parser().format_help()"
    assert _run(help_code)[0] == []
    predictor_code = (
        "import numpy as np\n"
        "from u2net.inference import BackgroundRemover, Predictor, RemovalOptions\n"
        f"predictor = Predictor.from_path({str(BUNDLED_ONNX)!r}, backend='onnxruntime')\n"
        "assert predictor.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)\n"
        "from u2net.data.preprocessing import Preprocessing\n"
        "from u2net.models.pretrained import PRETRAINED"
    )
    assert _run(predictor_code)[0] == []


@pytest.mark.subprocess
def test_the_registry_holds_the_builtin_architectures_whatever_is_imported_first() -> None:
    # u2net.models no longer imports its factory up front: the registry defines the built-ins itself.
    _, out = _run("from u2net.models.registry import list_models\nprint(list_models())")
    assert "['u2net', 'u2netp']" in out
    heavy, _ = _run("import u2net\nmodel = u2net.create_model('u2netp')\nassert model.model_name == 'u2netp'")
    assert "torch" in heavy


@pytest.mark.parametrize("package", ["u2net", "u2net.data", "u2net.models", "u2net.inference"])
def test_every_public_name_of_a_lazy_package_resolves(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_the_lazy_names_are_the_defining_modules_objects() -> None:
    import u2net
    from u2net.data import Preprocessing, normalize_image, preprocessing, transforms
    from u2net.inference import TorchBackend, predictor
    from u2net.models import create_model, factory

    assert u2net.create_model is create_model is factory.create_model
    assert Preprocessing is transforms.Preprocessing is preprocessing.Preprocessing
    assert transforms.resize_image is preprocessing.resize_image
    assert transforms.RESIZE_METHODS is preprocessing.RESIZE_METHODS
    assert TorchBackend.__module__ == "u2net.inference.torch_backend" and not hasattr(predictor, "torch")
    assert normalize_image is transforms.normalize_image


@pytest.mark.parametrize("mode", ["max", "standard"])
def test_normalize_image_is_the_numpy_normalisation_as_a_tensor(mode: str) -> None:
    from u2net.data import normalize_image
    from u2net.data.preprocessing import normalize_array

    image = np.random.default_rng(1).integers(0, 256, (12, 9, 3), dtype=np.uint8)
    tensor, array = normalize_image(image, mode=mode), normalize_array(image, mode=mode)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.shape == (3, 12, 9)
    assert array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_the_default_backend_runs_the_bundled_tag_on_onnx_runtime_unless_pytorch_is_asked_for() -> None:
    from u2net.inference import Predictor

    assert Predictor.from_path("u2netp.duts").info.backend == (
        "onnxruntime" if _onnx_runtime_suits("auto", "fp32") else "pytorch"
    )
    assert Predictor.from_path("u2netp.duts", precision="bf16").info.backend == "pytorch"  # autocast is PyTorch's
    assert Predictor.from_path("u2netp.duts", backend="pytorch").info.backend == "pytorch"


@pytest.mark.parametrize(
    ("machine", "device", "precision", "expected"),
    [
        # a CPU-only machine: ONNX Runtime for fp32 wherever PyTorch would run on the CPU
        ({}, "auto", "fp32", True),
        ({}, "cpu", "fp32", True),
        ({}, "cpu", "bf16", False),  # autocast is PyTorch's
        ({}, "cuda", "fp32", False),
        # an NVIDIA driver without onnxruntime-gpu: PyTorch would pick the GPU, so PyTorch is kept
        ({"nvidia": True}, "auto", "fp32", False),
        ({"nvidia": True}, "cpu", "fp32", True),
        # onnxruntime-gpu: its CUDA provider comes first, as PyTorch's "auto" would pick CUDA
        ({"nvidia": True, "cuda_provider": True}, "auto", "fp32", True),
        ({"nvidia": True, "cuda_provider": True}, "cpu", "fp32", True),  # on its CPU provider (below)
        ({"nvidia": True, "cuda_provider": True}, "auto", "fp16", False),
        # Apple silicon: PyTorch's "auto" picks MPS
        ({"apple": True}, "auto", "fp32", False),
        ({"apple": True}, "cpu", "fp32", True),
        # the light install (no torch): nothing but ONNX Runtime can take "auto"; PyTorch's own requests stay its
        ({"nvidia": True, "no_torch": True}, "auto", "fp32", True),
        ({"apple": True, "no_torch": True}, "auto", "fp32", True),
        ({"no_torch": True}, "cuda", "fp32", False),
        ({"no_torch": True}, "auto", "bf16", False),
    ],
)
def test_auto_backend_guesses_the_device_pytorch_would_pick(monkeypatch, machine, device, precision, expected) -> None:
    import u2net.inference.predictor as predictor

    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if machine.get("cuda_provider") else ["CPUExecutionProvider"]
    )
    monkeypatch.setattr(predictor, "pick_providers", lambda wanted=None: providers)
    monkeypatch.setattr(
        predictor.os.path, "exists", lambda path: machine.get("nvidia", False) and path == "/dev/nvidiactl"
    )
    monkeypatch.setattr(predictor.sys, "platform", "darwin" if machine.get("apple") else "linux")
    monkeypatch.setattr(predictor.platform, "machine", lambda: "arm64" if machine.get("apple") else "x86_64")
    monkeypatch.setattr(predictor, "_torch_installed", lambda: not machine.get("no_torch", False))
    assert predictor._onnx_runtime_suits(device, precision) is expected


def test_device_cpu_keeps_onnx_runtime_on_its_cpu_provider(monkeypatch) -> None:
    import u2net.inference.predictor as predictor

    asked = []

    class RecordingBackend(predictor.OnnxBackend):
        def __init__(self, source, providers=None, precision="fp32") -> None:
            asked.append(providers)
            super().__init__(source, providers, precision)

    monkeypatch.setattr(predictor, "OnnxBackend", RecordingBackend)
    # with onnxruntime-gpu the default order puts CUDA first: --device cpu must not end up there
    assert predictor.Predictor.from_path(BUNDLED_ONNX, device="cpu").info.extra["providers"] == ["CPUExecutionProvider"]
    predictor.Predictor.from_path(BUNDLED_ONNX)
    predictor.Predictor.from_path(BUNDLED_ONNX, device="cpu", providers=["CPUExecutionProvider"])
    assert asked == [["CPUExecutionProvider"], None, ["CPUExecutionProvider"]]


# -- inference does not depend on the training package ---------------------------------------------------------
# test_architecture.py lets layer-2 packages import each other; inference must not import engine even so:
# prediction would then depend on training (the device and precision helpers they share live in u2net.device).
FORBIDDEN = "u2net.engine"


def _names_forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(f"{FORBIDDEN}.")


def _engine_imports(source: str, module: str, is_package: bool = False) -> list[int]:
    """Lines of ``source`` (the code of u2net module ``module``) that import ``u2net.engine`` or anything in it,
    at any depth (inside functions too): ``import``, ``from ... import`` (relative ones resolved) and
    ``importlib.import_module`` / ``__import__`` of a literal name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(package):
                continue  # above the top-level package: Python refuses it
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            # ``from u2net import engine`` names the package in its alias, not in the module
            named = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            named = [node.args[0].value]
        else:
            continue
        if any(_names_forbidden(name) for name in named):
            lines.append(node.lineno)
    return sorted(lines)


def test_inference_never_imports_engine() -> None:
    found = {}
    for path in sorted(INFERENCE_DIR.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        if lines := _engine_imports(path.read_text(encoding="utf-8"), module, is_package):
            found[str(path.relative_to(REPO))] = lines
    assert not found, f"u2net.inference imports u2net.engine (file: lines): {found}"


def test_the_engine_import_check_finds_every_form() -> None:
    source = (
        "import importlib\n"
        "def backend():\n"
        "    from ..engine.utils import pick_device\n"  # 3: inside a function, relative
        "import u2net.engine\n"  # 4
        "from .. import engine\n"  # 5
        "from u2net import engine as training\n"  # 6
        "importlib.import_module('u2net.engine.trainer')\n"  # 7
        "from ..device import pick_device\n"  # 8: the shared helpers, allowed
        "from .engine_room import x\n"  # 9: u2net.inference.engine_room, allowed
        "import u2net.engines\n"  # 10: another name, allowed
    )
    assert _engine_imports(source, "u2net.inference.torch_backend") == [3, 4, 5, 6, 7]
    # in a package's __init__, "." is the package itself
    assert _engine_imports("from .engine import x\n", "u2net", is_package=True) == [1]
    assert _engine_imports("from ..engine import x\n", "u2net.inference", is_package=True) == [1]
