"""notebooks/quickstart.ipynb runs top to bottom (with a short schedule), so it never rots."""

from __future__ import annotations

import os

import pytest

from .conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.subprocess  # the kernel is a Python process


def test_quickstart_notebook_executes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QUICKSTART_STEPS", "4")
    monkeypatch.setenv("QUICKSTART_IMAGES", "24")
    monkeypatch.setenv("QUICKSTART_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("QUICKSTART_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")
    notebook = nbformat.read(REPO / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    client.execute()
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "validation MAE" in outputs and "max |ONNX - PyTorch|" in outputs
    assert (tmp_path / "work" / "quickstart_result.png").stat().st_size > 0
    assert os.path.exists(tmp_path / "work" / "u2netp_synthetic.onnx")
