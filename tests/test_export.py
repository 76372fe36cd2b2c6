"""ONNX export: parity with PyTorch, metadata, dynamic shapes, fp16 and int8, import back into PyTorch,
rembg's custom session, and the export_onnx.py command line."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import u2net
from u2net.data import eval_transform, normalize_image, read_image, read_mask
from u2net.data.transforms import Preprocessing
from u2net.export import (
    DEFAULT_MIN_SQNR_DB,
    FP16_ATOL,
    ExportWrapper,
    coarse_int8_convolutions,
    compare_accuracy,
    export_onnx,
    quantize_dynamic_int8,
    quantize_static_int8,
    read_onnx_metadata,
    synthetic_image,
    verify_onnx,
)
from u2net.inference import Predictor, TorchBackend
from u2net.inference.predictor import OnnxBackend, symbolic_batch_dim
from u2net.inference.runtime import median_seconds
from u2net.models import onnx_to_state_dict

from .conftest import REPO, lively_u2netp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = 64
# Mean absolute difference between the int8 and the fp32 fused probability maps that we accept. Measured on
# this test's model and images (64², 4 calibration images): dynamic 0.0027, static 0.0029 (max |diff| 0.07 and
# 0.10); at 320² on U²-Net† and U²-Net 0.0005-0.006. 0.02 leaves a wide margin and still catches a broken file.
INT8_MAE_TOL = 0.02
PREPROCESSING = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "normalization": "standard"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """64² tensors gain nothing from threads, and one thread keeps these tests quick on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return lively_u2netp()


@pytest.fixture(scope="module")
def folded(model, tmp_path_factory):
    """Default export (BatchNorm folded into the convolutions), dynamic height and width."""
    path = tmp_path_factory.mktemp("onnx") / "u2netp.onnx"
    return export_onnx(model, path, input_size=SIZE, dynamic_hw=True, metadata=PREPROCESSING)


@pytest.fixture(scope="module")
def unfolded(model, tmp_path_factory):
    """BatchNormalization nodes kept, fixed 64×64 input."""
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "bn.onnx", input_size=SIZE, fold_batchnorm=False)


def _torch_probs(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [torch.sigmoid(o).numpy() for o in model(torch.from_numpy(x))]


def _image_batch(count: int, size=SIZE, seed: int = 0) -> np.ndarray:
    """``count`` photo-like images of ``size`` (an int or (h, w)), normalised as the model expects."""
    return np.stack([normalize_image(synthetic_image(size, seed + i)).numpy() for i in range(count)])


def test_import_stays_importable_from_u2net_export() -> None:
    # ONNX import builds models, so it lives in u2net.models; u2net.export re-exports it as it always has.
    import u2net.export
    import u2net.models

    assert u2net.export.onnx_to_state_dict is u2net.models.onnx_to_state_dict
    assert u2net.export.read_onnx_checkpoint is u2net.models.read_onnx_checkpoint
    assert all(hasattr(u2net.export, name) for name in u2net.export.__all__)


def test_latency_is_the_median_after_warm_up() -> None:
    # timed: 0, 0.3, 0, 0.3, 0 s: the median is 0 (the mean would be 0.12, with the warm-up calls 0.17)
    sleeps = iter([0.3, 0.3, 0.0, 0.3, 0.0, 0.3, 0.0])

    def call() -> None:
        time.sleep(next(sleeps))

    assert median_seconds(call, runs=5, warmup=2) < 0.06
    assert next(sleeps, None) is None  # 2 + 5 calls


def test_parity_against_float64(model, folded) -> None:
    report = verify_onnx(folded, model, input_size=(SIZE, 96))  # a size other than the export's: dynamic axes
    assert report["ok"] and report["checker"] == "ok" and report["outputs"] == 7 and report["size"] == (SIZE, 96)
    for label in ("random", "image"):
        r = report[label]
        # ONNX Runtime is as close to the float64 model as PyTorch float32 itself is
        assert r["onnx_vs_float64"] <= 2 * r["torch_vs_float64"] + 1e-6, (label, r)
        assert r["max_abs_diff"] < 1e-4
    # the test model is not degenerate: its probabilities spread over (0, 1)
    probs = _torch_probs(model, _image_batch(1))[0]
    assert probs.min() < 0.2 and probs.max() > 0.8


def test_layout_metadata_and_predictor(model, folded) -> None:
    session = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "input" and model_input.type == "tensor(float)"
    assert model_input.shape == ["batch", 3, "height", "width"]
    assert [o.name for o in session.get_outputs()] == ["d0", "d1", "d2", "d3", "d4", "d5", "d6"]
    meta = read_onnx_metadata(folded)
    assert meta["model_name"] == "u2netp" and meta["image_size"] == SIZE
    assert meta["mean"] == PREPROCESSING["mean"] and meta["std"] == PREPROCESSING["std"]
    assert meta["normalization"] == "standard" and meta["interpolation"] == "linear"
    assert meta["u2net_version"] == u2net.__version__ and meta["batchnorm"] == "folded"
    assert meta["model_args"] == {"in_ch": 3, "out_ch": 1}
    # dynamic batch and size; outputs are probabilities, fused first
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, 96)).astype(np.float32)
    outputs = session.run(None, {"input": x})
    assert len(outputs) == 7 and all(o.shape == (2, 1, SIZE, 96) for o in outputs)
    for got, want in zip(outputs, _torch_probs(model, x)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the Predictor reads the preprocessing from the metadata and matches PyTorch with that preprocessing
    predictor = Predictor.from_path(folded)
    assert predictor.info.name == "u2netp" and predictor.input_size == SIZE
    assert predictor.preprocessing == Preprocessing.from_dict({**PREPROCESSING, "image_size": SIZE})
    assert {k: predictor.preprocessing.to_dict()[k] for k in PREPROCESSING} == PREPROCESSING
    reference = Predictor(TorchBackend(model, "cpu"), {**PREPROCESSING, "image_size": SIZE})
    image = synthetic_image((50, 70), seed=3)
    np.testing.assert_allclose(predictor.predict(image), reference.predict(image), atol=1e-5)


def test_cpu_session_runs_a_batch_image_by_image(model, folded) -> None:
    # On the CPU the symbolic batch dimension is fixed to 1 (ONNX Runtime then folds the shape
    # arithmetic); a batch still goes in and comes out whole, equal to PyTorch's.
    assert symbolic_batch_dim(Path(folded).read_bytes()) == "batch"
    backend = OnnxBackend(folded, providers=["CPUExecutionProvider"])
    assert backend.max_batch == 1
    x = _image_batch(3)
    probs = backend(x)
    assert probs.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(probs, _torch_probs(model, x)[0][:, 0], atol=1e-5)


def test_fp16_and_fused_only(model, tmp_path) -> None:
    path = export_onnx(model, tmp_path / "fp16.onnx", input_size=SIZE, fp16=True, fused_only=True)
    proto = onnx.load(str(path))
    assert {t.data_type for t in proto.graph.initializer if t.dims} >= {onnx.TensorProto.FLOAT16}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["mask"]
    assert session.get_inputs()[0].type == session.get_outputs()[0].type == "tensor(float)"  # apps feed float32
    assert read_onnx_metadata(path)["precision"] == "fp16"
    report = verify_onnx(path, model)
    assert report["ok"] and report["precision"] == "fp16" and report["outputs"] == 1
    # measured 1.7e-3 on this model (1.5e-3 at 320²); the stated tolerance is FP16_ATOL (1e-2) against float64
    assert max(report[k]["onnx_vs_float64"] for k in ("random", "image")) <= FP16_ATOL


def test_int8_within_tolerance(folded, tiny_synthetic, tmp_path) -> None:
    folder = tiny_synthetic / "DUTS-TE"
    images = [read_image(p) for p in sorted((folder / "DUTS-TE-Image").iterdir())]
    masks = [read_mask(p) for p in sorted((folder / "DUTS-TE-Mask").iterdir())]
    transform = eval_transform(SIZE, **PREPROCESSING)
    batch = [transform(im, np.zeros(im.shape[:2], np.float32))[0].numpy() for im in images]
    dynamic = quantize_dynamic_int8(folded, tmp_path / "dynamic.onnx")
    static = quantize_static_int8(folded, tmp_path / "static.onnx", batch[:4])
    for path, precision in ((dynamic, "int8-dynamic"), (static, "int8-static")):
        meta = read_onnx_metadata(path)
        assert meta["precision"] == precision and meta["model_name"] == "u2netp"
        report = compare_accuracy(folded, path, batch[4:], masks[4:], latency_runs=1, latency_size=SIZE)
        assert report["n_images"] == 4
        assert report["mae_vs_fp32"] <= INT8_MAE_TOL, (precision, report)
        assert 0 <= report["max_f_quant"] <= 1 and report["latency_ms_quant"] > 0
        assert report["size_mb_quant"] < 0.5 * report["size_mb_fp32"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


class _OutlierChannelNet(torch.nn.Module):
    """Two branches concatenated and convolved, as in U²-Net's decoder. The first branch's one channel is
    ``outlier`` times larger and the next convolution's weights for it as much smaller (the same function in
    float), so one int8 scale for the concatenation leaves the second branch's channels almost no steps (in
    the official u2netp: an upsampled channel peaking at 228, and 29 of the other 31 under 25)."""

    def __init__(self, outlier: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c, self.out = torch.nn.Conv2d(5, 4, 3, padding=1), torch.nn.Conv2d(4, 1, 3, padding=1)
        with torch.no_grad():
            self.a.weight *= outlier
            self.a.bias[:] = self.a.bias.abs() * outlier
            self.c.weight[:, 0] /= outlier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return torch.sigmoid(4 * self.out(torch.relu(self.c(joined))))


def test_int8_keeps_convolutions_with_a_coarse_input_float(tmp_path) -> None:
    images = [np.random.default_rng(i).standard_normal((3, 24, 24)).astype(np.float32) for i in range(8)]
    errors = {}
    for outlier in (1.0, 400.0):
        fp32 = tmp_path / f"fp32_{outlier:g}.onnx"
        net = _OutlierChannelNet(outlier).eval()
        torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(fp32), input_names=["x"], dynamo=False)
        op_types = {node.name: node.op_type for node in onnx.load(str(fp32)).graph.node}
        coarse = [op_types[name] for name in coarse_int8_convolutions(fp32, images[:4])]
        assert coarse == ([] if outlier == 1 else ["Conv", "Concat"])  # the convolution after the concatenation
        for min_sqnr_db in (0, DEFAULT_MIN_SQNR_DB):
            dst = tmp_path / f"int8_{outlier:g}_{min_sqnr_db}.onnx"
            path = quantize_static_int8(fp32, dst, images[:4], min_sqnr_db=min_sqnr_db)
            kept = read_onnx_metadata(path)["float_nodes"]  # which nodes stayed float, for the export report
            assert [op_types[name] for name in kept] == (coarse if min_sqnr_db else [])
            errors[outlier, min_sqnr_db] = compare_accuracy(fp32, path, images[4:], latency_runs=0)["mae_vs_fp32"]
    # the outlier ruins plain int8; keeping the coarse convolution float brings it back to the ordinary error
    assert errors[400.0, 0] > 5 * errors[1.0, 0]
    assert errors[400.0, DEFAULT_MIN_SQNR_DB] < 2 * errors[1.0, 0]


def test_int8_of_an_opset_11_file_like_rembgs(tmp_path) -> None:
    # rembg's ONNX files are opset 11, older than per-channel int8 needs: the quantiser converts them first
    fp32 = tmp_path / "opset11.onnx"
    torch.onnx.export(
        _OutlierChannelNet(1.0).eval(), (torch.zeros(1, 3, 24, 24),), str(fp32), opset_version=11, dynamo=False
    )
    images = [np.random.default_rng(i).standard_normal((3, 24, 24)).astype(np.float32) for i in range(6)]
    for path in (
        quantize_static_int8(fp32, tmp_path / "static.onnx", images[:3]),
        quantize_dynamic_int8(fp32, tmp_path / "dynamic.onnx"),
    ):
        assert compare_accuracy(fp32, path, images[3:], latency_runs=0)["mae_vs_fp32"] < INT8_MAE_TOL
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_import_unfolded_graph_is_exact(model, unfolded) -> None:
    proto = onnx.load(str(unfolded))
    assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert ort.InferenceSession(str(unfolded)).get_inputs()[0].shape == ["batch", 3, SIZE, SIZE]
    name, state = onnx_to_state_dict(unfolded)
    assert name == "u2netp"
    reference = model.state_dict()
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], value), key


def test_import_folded_graph_gives_equal_outputs(model, folded) -> None:
    proto = onnx.load(str(folded))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # BN folded into the convs
    name, state = onnx_to_state_dict(folded)
    assert name == "u2netp"
    assert torch.equal(state["stage1.rebnconvin.bn_s1.weight"], torch.ones(64))
    assert torch.equal(state["stage1.rebnconvin.bn_s1.running_mean"], torch.zeros(64))
    # every way of loading weights accepts the file
    loaded = u2net.load_model(folded)
    created = u2net.create_model("u2netp", weights=str(folded)).eval()
    x = _image_batch(2, size=(48, 80))
    want = _torch_probs(model, x)
    for other in (loaded, created):
        for got, ref in zip(_torch_probs(other, x), want):
            np.testing.assert_allclose(got, ref, atol=1e-5)
    with torch.no_grad():  # logits too
        diff = max(float((a - b).abs().max()) for a, b in zip(loaded(torch.from_numpy(x)), model(torch.from_numpy(x))))
    assert diff < 1e-4


def test_import_matches_by_structure_not_node_order(model, unfolded, tmp_path) -> None:
    # Graph optimisers (ONNX Runtime's, onnx-simplifier) reorder nodes: e.g. a side convolution right after its
    # encoder stage instead of after the decoder. Any topological order must import the same.
    proto = onnx.load(str(unfolded))
    nodes = list(proto.graph.node)
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output}
    ready = {v.name for v in proto.graph.input} | {t.name for t in proto.graph.initializer} | {""}
    pending, order = list(range(len(nodes))), []
    while pending:  # a valid topological order that runs every node as late as possible (reversed Kahn)
        for i in reversed(pending):
            if all(name in ready or name not in produced_by for name in nodes[i].input):
                order.append(i)
                ready.update(nodes[i].output)
                pending.remove(i)
                break
    assert order != list(range(len(nodes)))
    del proto.graph.node[:]
    proto.graph.node.extend([nodes[i] for i in order])
    onnx.checker.check_model(proto)
    shuffled = tmp_path / "reordered.onnx"
    onnx.save(proto, str(shuffled))
    _, state = onnx_to_state_dict(shuffled)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value) or key.endswith("num_batches_tracked"), key


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript ONNX exporter
def test_import_a_file_exported_like_rembgs(model, tmp_path) -> None:
    # rembg's u2net.onnx / u2netp.onnx / u2net_human_seg.onnx came from the original repository's model
    # (sigmoid outputs, fused first) through a plain torch.onnx.export at opset 11: input "input.1", a
    # fixed 1×3×320×320 shape, numbered output names, BatchNorm folded by the exporter's eval pass.
    path = tmp_path / "u2netp.onnx"
    torch.onnx.export(ExportWrapper(model), torch.zeros(1, 3, 320, 320), str(path), opset_version=11, dynamo=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].name == "input.1" and proto.opset_import[0].version == 11
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    imported = u2net.load_model(path).eval()
    assert imported.model_name == "u2netp"
    model.eval()
    x = _image_batch(1, size=320)
    predictor = Predictor.from_path(path)  # runs the file itself, at its fixed size
    assert predictor.input_size == 320
    for got, want in zip(_torch_probs(imported, x), _torch_probs(model, x)):
        np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(predictor.backend(x), _torch_probs(model, x)[0][:, 0], atol=1e-4)


def test_import_refuses_other_models(tmp_path) -> None:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()),
        torch.zeros(1, 3, 8, 8),
        str(path),
        dynamo=False,
    )
    with pytest.raises(ValueError, match="does not match any U²-Net architecture"):
        onnx_to_state_dict(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        u2net.load_model(tmp_path / "junk.onnx")


def test_rembg_custom_session_runs_our_file(folded, tmp_path, monkeypatch) -> None:
    rembg = pytest.importorskip("rembg")
    from PIL import Image

    home = tmp_path / "u2net_home"
    home.mkdir()
    model_path = home / "ours.onnx"
    model_path.write_bytes(folded.read_bytes())
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    session = rembg.new_session("u2net_custom", model_path=str(model_path))  # runs it at 320×320
    image = Image.fromarray(synthetic_image((60, 90), seed=5))
    mask = rembg.remove(image, session=session, only_mask=True)
    assert mask.mode == "L" and mask.size == image.size
    assert np.asarray(mask).max() > np.asarray(mask).min()


# --------------------------------------------------------------------------- command line


def _export_cli(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "export_onnx.py"), "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the one_thread fixture does here
    return subprocess.run([*command, *overrides], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


@pytest.mark.subprocess
def test_cli_exports_int8_with_report_and_refuses_to_overwrite(model, tmp_path) -> None:
    ckpt = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "model_name": "u2netp", "preprocessing": PREPROCESSING}, ckpt)
    out = tmp_path / "out" / "model_int8.onnx"
    done = _export_cli(
        tmp_path,
        f"weights={ckpt}",
        f"output={out}",
        f"input_size={SIZE}",
        "int8=static",
        "calibration.count=3",
        "report_count=2",
        "latency_runs=1",
        f"paths.data_dir={tmp_path / 'data'}",
        "calibration.dataset_overrides=['data.synthetic.num_train=1','data.synthetic.num_val=5']",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verify (fp32, 64×64): onnx checker ok" in done.stdout and "-> ok" in done.stdout
    assert "int8 (static, 3 calibration image(s)) against fp32 on 2 synthetic image(s)" in done.stdout
    assert "MAE vs fp32" in done.stdout and "latency 64×64 (ms)" in done.stdout
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "int8-static" and meta["normalization"] == "standard"
    assert meta["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model_int8.onnx"]  # no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model.pt", "out"]  # no Hydra run folder
    # an int8 file loads back too (its weights dequantised), close to the original model
    loaded = u2net.load_model(out)
    x = _image_batch(1)
    assert np.abs(_torch_probs(loaded, x)[0] - _torch_probs(model, x)[0]).mean() <= INT8_MAE_TOL

    before = out.read_bytes()
    again = _export_cli(tmp_path, f"weights={ckpt}", f"output={out}", f"input_size={SIZE}")
    assert again.returncode == 1 and again.stderr.strip().endswith(
        f"error: {out}: already exists (pass overwrite=true to replace it)"
    )
    assert out.read_bytes() == before
    missing = _export_cli(tmp_path, f"weights={tmp_path / 'nope.pt'}", f"output={tmp_path / 'x.onnx'}")
    assert missing.returncode == 1 and missing.stderr.strip().endswith("nope.pt: weights file not found")
    for result in (again, missing):
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_export_notes_a_size_other_than_the_validation_size() -> None:
    from u2net.export import input_size_note

    assert input_size_note("best.pt", 320, 320) is None
    note = input_size_note("best.pt", 128, 320)
    assert "best.pt was validated at 128², the file takes 320²" in note and "input_size=128" in note
