"""The base install runs ONNX files on ONNX Runtime alone: neither ``Predictor.from_path`` (a tag or an ``.onnx``
file) nor inference imports the ``onnx`` package, which only export, import and quantisation need.

The files are made here with ``onnx``; they are loaded in a fresh interpreter where ``import onnx`` fails, as in an
install without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from u2net.models.pretrained import bundled_weights_path

from .conftest import run_python_json

onnx = pytest.importorskip("onnx")

# Runs in the fresh interpreter: argv[1] is a JSON map of the files; prints one JSON line of what it saw.
_CHECK = """
import sys
sys.modules["onnx"] = None  # before u2net: `import onnx` raises ImportError, as where it is not installed

import json
import numpy as np
from u2net.inference import Predictor

files = json.loads(sys.argv[1])
image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
seen = {}
for name, path in (("tag", "u2netp.duts"), ("dynamic", files["dynamic"]), ("external", files["external"])):
    predictor = Predictor.from_path(path, device="cpu")
    assert predictor.predict(image).shape == (40, 30), name
    seen[name] = {"max_batch": predictor.backend.max_batch, "input": predictor.backend.session.get_inputs()[0].shape}
int8 = Predictor.from_path("u2netp.duts", device="cpu", precision="int8")  # the CLI's default on most CPUs
seen["int8"] = {"source": int8.info.source, "max_batch": int8.backend.max_batch}
reference = Predictor.from_path(files["reference"], device="cpu")
external = Predictor.from_path(files["external"], device="cpu")
seen["external_diff"] = float(np.abs(external.predict(image) - reference.predict(image)).max())
batch = np.zeros((3, 3, 320, 320), np.float32)
seen["dynamic_batch_out"] = list(Predictor.from_path(files["dynamic"], device="cpu").backend(batch).shape)
for name in ("junk", "rank3"):
    try:
        Predictor.from_path(files[name], device="cpu", backend="onnxruntime")
    except ValueError as exc:
        seen[name] = str(exc)
# the entry is still the block (nothing imported onnx over it), and no part of onnx nor protobuf came in
assert sys.modules["onnx"] is None
seen["loaded"] = sorted(m for m in sys.modules if m.startswith(("onnx.", "google.protobuf")) and sys.modules[m])
print(json.dumps(seen))
"""


def _rank3_input(path: Path) -> Path:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _renamed_batch(source: Path, path: Path, name: str) -> Path:
    """``source`` (a symbolic batch named ``batch``) with that dimension named ``name``: the name is read, not
    assumed."""
    model = onnx.load(str(source))
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.dim_param = name
    onnx.save(model, str(path))
    return path


@pytest.mark.subprocess
def test_onnx_files_load_and_run_without_the_onnx_package(tmp_path: Path) -> None:
    person = bundled_weights_path("u2netp.person")  # fp32, batch symbolic
    assert onnx.load(str(person)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    reference = bundled_weights_path("u2netp.duts")  # fp32, batch fixed at 1
    folder = tmp_path / "model"
    folder.mkdir()
    external = folder / "external.onnx"
    onnx.save(onnx.load(str(reference)), str(external), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (folder / "w.bin").stat().st_size > external.stat().st_size
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)  # in the working folder: not the model's data
    files = {
        "dynamic": str(_renamed_batch(person, tmp_path / "dynamic.onnx", "images")),
        "external": str(external),
        "reference": str(reference),
        "junk": str(tmp_path / "junk.onnx"),
        "rank3": str(_rank3_input(tmp_path / "rank3.onnx")),
    }
    Path(files["junk"]).write_bytes(b"not an ONNX file")

    seen = run_python_json(_CHECK, json.dumps(files), cwd=tmp_path, timeout=300)

    assert seen["tag"] == {"max_batch": 1, "input": [1, 3, 320, 320]}  # the bundled fp32 file: batch fixed
    assert Path(seen["int8"]["source"]).name == "u2netp_int8.onnx" and seen["int8"]["max_batch"] == 1
    # the symbolic batch (named "images" here) is fixed to 1 on the CPU; a batch still goes in and out whole
    assert seen["dynamic"] == {"max_batch": 1, "input": [1, 3, 320, 320]}
    assert seen["dynamic_batch_out"] == [3, 320, 320]
    assert seen["external"]["max_batch"] == 1 and seen["external_diff"] < 1e-5  # its data, found beside it
    assert seen["junk"].startswith(f"{files['junk']}: not a readable ONNX file (")
    assert seen["rank3"] == f"{files['rank3']}: expects an image input N×3×H×W; this file's input 'x' is 1×3×8"
    assert "\n" not in seen["junk"] + seen["rank3"]
    assert seen["loaded"] == []
