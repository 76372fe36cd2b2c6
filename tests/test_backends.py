"""The backend contract: PyTorch's and ONNX Runtime's backends both satisfy ``InferenceBackend``, ``ModelInfo``
carries where and how the model runs in typed fields (and the old ``extra`` dict, made from them), and the
device and precision helpers live below both engine and inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from u2net.inference import InferenceBackend, ModelInfo, OnnxBackend, Predictor, TorchBackend

from .conftest import REPO, save_tiny_checkpoint

BUNDLED_ONNX = REPO / "u2net" / "models" / "bundled" / "u2netp.onnx"
BUNDLED_TAG = "u2netp.duts"


@pytest.fixture(scope="module")
def torch_predictor(tmp_path_factory) -> Predictor:
    path = tmp_path_factory.mktemp("backends") / "tiny.pt"
    save_tiny_checkpoint(path)
    return Predictor.from_path(path, device="cpu")


@pytest.fixture(scope="module")
def onnx_predictor() -> Predictor:
    return Predictor.from_path(BUNDLED_TAG, device="cpu", backend="onnxruntime")


def test_both_backends_satisfy_the_protocol(torch_predictor: Predictor, onnx_predictor: Predictor) -> None:
    for predictor, kind in ((torch_predictor, TorchBackend), (onnx_predictor, OnnxBackend)):
        backend = predictor.backend
        assert isinstance(backend, kind) and isinstance(backend, InferenceBackend)
        assert backend.on_gpu is False  # device="cpu"
        assert backend.precision == "fp32"
        assert backend.fixed_size is None or isinstance(backend.fixed_size, int)
        assert backend.max_batch is None or isinstance(backend.max_batch, int)
        size = backend.fixed_size or 64
        probs = backend(np.zeros((2, 3, size, size), np.float32))
        assert probs.shape == (2, size, size) and probs.dtype == np.float32
        assert probs.min() >= 0.0 and probs.max() <= 1.0


def test_the_protocol_check_means_something() -> None:
    class NoGpuAnswer:
        fixed_size = None
        max_batch = None
        precision = "fp32"

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return batch[:, 0]

    assert not isinstance(NoGpuAnswer(), InferenceBackend)


def test_on_gpu_reads_the_device_or_the_first_provider(onnx_predictor: Predictor) -> None:
    import torch

    assert TorchBackend(torch.nn.Identity(), "cpu").on_gpu is False
    backend = onnx_predictor.backend
    saved = backend.providers
    try:
        for providers, expected in [
            (["CUDAExecutionProvider", "CPUExecutionProvider"], True),
            (["TensorrtExecutionProvider", "CUDAExecutionProvider"], True),
            (["ROCMExecutionProvider"], True),
            (["OpenVINOExecutionProvider", "CPUExecutionProvider"], False),
            (["CPUExecutionProvider", "CUDAExecutionProvider"], False),  # the first one computes
            ([], False),
        ]:
            backend.providers = providers
            assert backend.on_gpu is expected, providers
    finally:
        backend.providers = saved


def test_model_info_fields_on_pytorch(torch_predictor: Predictor) -> None:
    info = torch_predictor.info
    assert isinstance(info, ModelInfo)
    assert (info.name, info.backend, info.device, info.providers) == ("u2netp", "pytorch", "cpu", None)
    assert info.precision == "fp32"
    assert info.parameters and info.parameters > 0 and info.size_mb and info.size_mb > 0
    # the untyped dict reports and the service read: the same keys, in the same order, as before the fields
    assert list(info.extra.items()) == [("device", "cpu"), ("precision", "fp32")]


def test_model_info_fields_on_onnx_runtime(onnx_predictor: Predictor) -> None:
    info = onnx_predictor.info
    assert (info.name, info.backend, info.source) == ("u2netp", "onnxruntime", str(BUNDLED_ONNX))
    assert info.device is None and info.parameters is None and info.size_mb and info.size_mb > 0
    assert info.providers == ["CPUExecutionProvider"] == onnx_predictor.backend.providers
    assert info.precision == "fp32"
    assert list(info.extra.items()) == [("providers", ["CPUExecutionProvider"]), ("precision", "fp32")]
    info.extra["providers"].append("changed")  # a copy: the fields stay as they are
    assert info.providers == ["CPUExecutionProvider"]


def test_a_hand_made_predictor_reports_no_runtime_facts(torch_predictor: Predictor) -> None:
    predictor = Predictor(torch_predictor.backend)
    assert (predictor.info.name, predictor.info.backend, predictor.info.extra) == ("unknown", "TorchBackend", {})


def test_precision_auto_is_resolved_in_the_backend_and_the_info(tmp_path: Path) -> None:
    from u2net.device import PRECISIONS

    save_tiny_checkpoint(tmp_path / "tiny.pt")
    predictor = Predictor.from_path(tmp_path / "tiny.pt", device="cpu", precision="auto")
    assert predictor.backend.precision in PRECISIONS
    assert predictor.info.precision == predictor.backend.precision == predictor.info.extra["precision"]


def test_each_backend_has_its_module_and_the_helpers_one_home() -> None:
    import u2net.device
    import u2net.engine
    import u2net.inference.onnx_backend
    import u2net.inference.predictor

    assert TorchBackend.__module__ == "u2net.inference.torch_backend"
    assert OnnxBackend.__module__ == "u2net.inference.onnx_backend"
    assert u2net.inference.predictor.OnnxBackend is OnnxBackend
    assert u2net.inference.predictor.symbolic_batch_dim is u2net.inference.onnx_backend.symbolic_batch_dim
    assert u2net.engine.pick_device is u2net.device.pick_device
    assert u2net.engine.autocast_context is u2net.device.autocast_context
