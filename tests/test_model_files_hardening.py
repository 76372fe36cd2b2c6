"""Model files that are damaged, forged or unusual (issue 24): each fails in one line naming the file, early.

M3 model_args checked before anything is allocated; L9 one resolution of tags, ONNX external data, digest
mismatches, ONNX inputs; L10 resume state; L11 links in recursive data folders; L8 evaluation reports."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import u2net
from u2net.inference import Predictor
from u2net.models import Checkpoint, load_checkpoint
from u2net.models.u2net import U2Net

from .conftest import save_tiny_checkpoint


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# -- M3: a checkpoint's model_args are checked before anything is allocated ------------------------------------
@pytest.fixture
def real_builds(monkeypatch) -> list[dict]:
    """The arguments of every U2Net built with real (not meta) tensors while the test runs."""
    built: list[dict] = []
    original = U2Net.__init__

    def spying(self, stages, in_ch=3, out_ch=1):
        original(self, stages, in_ch, out_ch)
        if not next(self.parameters()).is_meta:
            built.append({"stages": self.stages, "in_ch": in_ch, "out_ch": out_ch})

    monkeypatch.setattr(U2Net, "__init__", spying)
    return built


def test_model_args_that_do_not_fit_the_weights_never_build_a_real_model(tmp_path, real_builds) -> None:
    # A few hundred bytes asking for a wide model (the file asked for 4096 channels: 2.9 GB).
    stages = {"encoder": [(4, 3, 256, 256, False), (4, 256, 256, 256, True)], "decoder": [(4, 512, 256, 256, False)]}
    path = tmp_path / "forged.pt"
    weights = {"stage1.rebnconvin.conv_s1.weight": torch.zeros(2, 2)}
    torch.save({"model": weights, "model_name": "u2net", "model_args": {"stages": stages}}, path)
    assert path.stat().st_size < 4096
    with pytest.raises(ValueError, match="does not fit model 'u2net'.*shape mismatch") as info:
        u2net.load_model(path)
    _one_line_naming(info, path)
    with pytest.raises(ValueError, match="does not fit model"):
        Predictor.from_path(path, device="cpu", backend="pytorch")
    assert real_builds == []  # only the meta-device skeleton was built
    # A good checkpoint still builds (once, for real).
    good = tmp_path / "good.pt"
    save_tiny_checkpoint(good)
    real_builds.clear()  # the model saved there
    assert u2net.load_model(good).model_name == "u2netp" and len(real_builds) == 1


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"in_ch": 10**12}, r"in_ch must be a whole number from 1 to 16384, got 1000000000000"),
        ({"out_ch": 0}, r"out_ch must be a whole number from 1 to 16384, got 0"),
        ({"stages": {"encoder": [(10**6, 3, 4, 4, False)] * 2, "decoder": [(4, 8, 4, 4, False)]}}, "height"),
        ({"stages": {"encoder": [(4, 3, 4, 4, False)] * 10**5, "decoder": []}}, "at most 16 rows"),
        ({"stages": {"encoder": [(4, 3, 4, 4, False)], "decoder": ["x"]}}, "decoder row 1 is not"),
        ({"stages": "huge"}, "stage table must be a dict"),
        ({"width": 4096}, "unexpected keyword argument 'width'"),
    ],
)
def test_out_of_bounds_model_args_fail_in_one_line(tmp_path, real_builds, args, problem) -> None:
    path = tmp_path / "forged.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_name": "u2netp", "model_args": args}, path)
    with pytest.raises(ValueError, match=f"its model_args do not build a u2netp .*{problem}") as info:
        u2net.load_model(path)
    _one_line_naming(info, path)
    assert real_builds == []


def test_model_args_that_are_no_dict_are_refused(tmp_path) -> None:
    path = tmp_path / "forged.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "model_name": "u2netp", "model_args": [4096]}, path)
    with pytest.raises(ValueError, match="its model_args are not a dict of named arguments") as info:
        load_checkpoint(path)
    _one_line_naming(info, path)


# -- L9 (a): one resolution of a tag, whichever backend ------------------------------------------------------
def test_a_tag_means_the_tag_on_both_backends_and_dot_slash_means_the_file(tmp_path, monkeypatch) -> None:

    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "u2netp.duts")  # a local file named like the bundled tag (validated at 64 px)
    PRETRAINED_SIZE = u2net.models.PRETRAINED["u2netp.duts"].preprocessing.image_size
    assert PRETRAINED_SIZE != 64
    assert load_checkpoint("u2netp.duts").preprocessing.image_size == PRETRAINED_SIZE
    for backend in ("pytorch", "onnxruntime"):
        predictor = Predictor.from_path("u2netp.duts", device="cpu", backend=backend)
        assert predictor.input_size == PRETRAINED_SIZE, backend
    for local in ("./u2netp.duts", Path("u2netp.duts")):
        assert load_checkpoint(local).preprocessing.image_size == 64
        assert Predictor.from_path(local, device="cpu").input_size == 64
        assert u2net.load_model(local).model_name == "u2netp"


# -- L9 (b): ONNX files with external data run on ONNX Runtime -------------------------------------------------
def test_an_onnx_file_with_external_data_runs_on_onnx_runtime(tmp_path, monkeypatch) -> None:
    import onnx

    from u2net.models.pretrained import bundled_weights_path

    model = onnx.load(str(bundled_weights_path("u2netp.duts")))
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="external.bin", size_threshold=0)
    assert (folder / "external.bin").stat().st_size > path.stat().st_size
    monkeypatch.chdir(tmp_path)  # not the model's folder: the data is found beside the file
    predictor = Predictor.from_path(path, device="cpu", backend="onnxruntime")
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    reference = Predictor.from_path("u2netp.duts", device="cpu", backend="onnxruntime")
    np.testing.assert_allclose(predictor.predict(image), reference.predict(image), atol=1e-5)


# -- L9 (c): a digest mismatch says so, with both digests, and never "offline?" -------------------------------
def test_a_digest_mismatch_is_reported_as_a_corrupt_file_not_as_offline(tmp_path, monkeypatch) -> None:
    from u2net.models.pretrained import PRETRAINED, PretrainedCfg, WeightsMismatchError, download_weights

    remote = tmp_path / "remote.pth"
    remote.write_bytes(b"pretend these are weights" * 100)
    md5 = hashlib.md5(remote.read_bytes()).hexdigest()
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    cfg = PretrainedCfg("u2netp", "pinned.pth", (remote.as_uri(),), md5="0" * 32)
    monkeypatch.setitem(PRETRAINED, "u2netp.pinned", cfg)
    with pytest.raises(WeightsMismatchError) as info:
        download_weights("u2netp.pinned", progress=False)
    message = str(info.value)
    assert "offline" not in message and "corrupt or not the published file" in message
    assert f"expected md5 {'0' * 32}, got {md5}" in message and "\n" not in message

    monkeypatch.setitem(PRETRAINED, "u2netp.pinned", replace(cfg, md5=md5))
    path = download_weights("u2netp.pinned", progress=False)
    path.write_bytes(b"swapped")  # the cached copy changed since
    with pytest.raises(WeightsMismatchError) as info:
        load_checkpoint("u2netp.pinned")
    message = str(info.value)
    swapped = hashlib.md5(b"swapped").hexdigest()
    assert message.startswith(f"{path}: ") and "corrupt, or another file" in message and "offline" not in message
    assert f"md5 {swapped}, expected {md5}" in message


# -- L9 (d): an ONNX file whose input is no image is named, in one line ---------------------------------------
def _onnx_file(path: Path, inputs: list, output_from: str | None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    if output_from is None:  # no input at all: a constant
        value = helper.make_tensor("c", TensorProto.FLOAT, [1, 1, 2, 2], [0.0] * 4)
        node = helper.make_node("Constant", [], ["y"], value=value)
    else:
        node = helper.make_node("Identity", [output_from], ["y"])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", inputs, [output])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    ("shape", "shown"),
    [
        ([1, 3, 8], "this file's input 'x' is 1×3×8"),
        (["n", 1, 8, 8], "this file's input 'x' is n×1×8×8"),
        (None, "no input"),
    ],
)
def test_an_onnx_file_without_an_image_input_is_refused_in_one_line(tmp_path, shape, shown) -> None:
    from onnx import TensorProto, helper

    if shape is None:
        path = _onnx_file(tmp_path / "m.onnx", [], None)
    else:
        path = _onnx_file(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], "x")
    with pytest.raises(ValueError, match="expects an image input N×3×H×W") as info:
        Predictor.from_path(path, device="cpu", backend="onnxruntime")
    assert shown in _one_line_naming(info, path)


# -- L10: a damaged checkpoint never starts (nor saves) a resumed run -----------------------------------------
def _trainer(root: Path, out_dir: Path):
    from u2net.data import SaliencyDataModule
    from u2net.engine import LRSchedule, Trainer, TrainerConfig
    from u2net.losses import DeepSupervisionLoss

    def source(split):
        return [{"name": split, "root": str(root / split), "images": f"{split}-Image", "masks": f"{split}-Mask"}]

    data = SaliencyDataModule(
        train=source("DUTS-TR"), val=source("DUTS-TE"), batch_size=4, num_workers=0, image_size=48, crop_size=40,
        progress=False, check="header",
    )  # fmt: skip
    torch.manual_seed(0)
    model = u2net.create_model("u2netp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = TrainerConfig(out_dir=str(out_dir), max_steps=8, progress=False, device="cpu", seed=3, val_every=0)
    return Trainer(model, DeepSupervisionLoss(), optimizer, LRSchedule("cosine", warmup_steps=2), data, config, {})


def _resumable(trainer, path: Path, **changes) -> Path:
    from u2net.engine.checkpoint import rng_state

    optimizer = trainer.optimizer.state_dict()
    state = Checkpoint(
        model=trainer.module.state_dict(),
        model_name="u2netp",
        step=3,
        optimizer=optimizer,
        rng=rng_state(),
        metrics={"mae": 0.2},
    )
    for key, value in changes.items():
        setattr(state, key, value)
    state.save(path)
    return path


def _with_moment(trainer, shape: tuple[int, ...]) -> dict:
    optimizer = trainer.optimizer.state_dict()
    optimizer["state"] = {
        0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(shape), "exp_avg_sq": torch.zeros(shape)}
    }
    return optimizer


def _rng(**parts) -> dict:
    from u2net.engine.checkpoint import rng_state

    return rng_state() | parts


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (lambda t: {"step": "abc"}, "cannot resume from it: step 'abc' is not a whole number >= 0"),
        (lambda t: {"step": -5}, "cannot resume from it: step -5 is not a whole number >= 0"),
        (lambda t: {"train_seconds": float("nan")}, "train_seconds nan is not a number of seconds"),
        (lambda t: {"history": "x"}, "history is not a list of dicts"),
        (lambda t: {"rng": _rng(python=(3, (1, 2), None))}, "its Python RNG state cannot be restored"),
        (lambda t: {"rng": _rng(torch=torch.zeros(3, dtype=torch.uint8))}, "its torch RNG state cannot be restored"),
        (lambda t: {"rng": _rng(numpy={"keys": "x"})}, "its NumPy RNG state cannot be restored"),
        (lambda t: {"optimizer": _with_moment(t, (5,))}, r"exp_avg of parameter 0 has shape \(5,\), the parameter"),
        (lambda t: {"optimizer": {"state": {}, "param_groups": []}}, "does not fit this run's parameter groups"),
    ],
)
def test_a_malformed_checkpoint_is_refused_before_training(tiny_synthetic, tmp_path, changes, problem) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path / "run")
    path = _resumable(trainer, tmp_path / "last.pt", **changes(trainer))
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    python_rng, torch_rng = random.getstate(), torch.get_rng_state()
    trainer._setup_data = lambda: pytest.fail("the data was set up before the checkpoint was checked")
    with pytest.raises(ValueError, match=problem) as info:
        trainer.fit(ckpt_path=str(path))
    _one_line_naming(info, path)
    assert trainer.step == 0 and not (tmp_path / "run" / "checkpoints").exists()  # no last.pt with step -5
    assert all(torch.equal(before[k], v) for k, v in trainer.module.state_dict().items())
    assert random.getstate() == python_rng and torch.equal(torch.get_rng_state(), torch_rng)


def test_a_well_formed_checkpoint_restores(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path / "run")
    path = _resumable(
        trainer,
        tmp_path / "last.pt",
        optimizer=_with_moment(trainer, trainer.module.stage1.rebnconvin.conv_s1.weight.shape),
    )
    trainer.restore(path)
    assert trainer.step == 3 and trainer.metrics == {"mae": 0.2}
    assert trainer.optimizer.state_dict()["state"][0]["exp_avg"].shape == (64, 3, 3, 3)


# -- L11: links in recursive data folders are followed once, loops named ---------------------------------------
def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(path)


def test_recursive_listing_follows_links_to_folders_once_and_names_loops(tmp_path) -> None:
    from u2net.data.io import list_images

    top = tmp_path / "images"
    _png(top / "real" / "a.png")
    _png(tmp_path / "elsewhere" / "b.png")
    (top / "linked").symlink_to(tmp_path / "elsewhere")
    (top / "real" / "loop").symlink_to(top)  # back to a folder above it
    (top / "again").symlink_to(top / "real")  # a folder listed already
    (top / "inside").symlink_to(tmp_path / "elsewhere")  # the same target twice: listed once
    (top / "dangling").symlink_to(tmp_path / "nowhere")
    skipped: list = []
    found = list_images(top, recursive=True, skipped=skipped, follow_links=True)
    assert [p.relative_to(top).as_posix() for p in found] == ["inside/b.png", "real/a.png"]
    reasons = {p.relative_to(top).as_posix(): why for p, why in skipped}
    assert reasons["real/loop"] == f"symbolic link loop (leads back to {top}, a folder above it)"
    assert reasons["again"] == f"symbolic link that leads to {top / 'real'}, listed already"
    assert reasons["linked"] == f"symbolic link that leads to {top / 'inside'}, listed already"
    assert reasons["dangling"] == "broken symbolic link, or a link loop"
    # Without follow_links (u2net remove) nothing changes: links to folders are named, not followed.
    skipped = []
    assert list_images(top, recursive=True, skipped=skipped) == [top / "real" / "a.png"]
    assert ("symbolic link to a folder (not followed)") in {why for _, why in skipped}


def test_a_recursive_dataset_pairs_linked_folders_and_warns_about_each_left_out_link(tmp_path) -> None:
    from u2net.data.folder import SourceSpec, scan_source

    for folder in ("images", "masks"):
        _png(tmp_path / "ds" / folder / "own" / "a.png")
        _png(tmp_path / "shared" / folder / "b.png")
        (tmp_path / "ds" / folder / "shared").symlink_to(tmp_path / "shared" / folder)
    (tmp_path / "ds" / "images" / "own" / "up").symlink_to(tmp_path / "ds" / "images")
    with pytest.warns(UserWarning, match=r"dataset ds: left out .*own/up: symbolic link loop") as record:
        scan = scan_source(SourceSpec("ds", str(tmp_path / "ds"), recursive=True))
    assert sorted(image.relative_to(tmp_path / "ds").as_posix() for image, _ in scan.pairs) == [
        "images/own/a.png",
        "images/shared/b.png",
    ]
    assert not scan.problems and len(record) == 1 and "\n" not in str(record[0].message)


# -- L8: evaluation reports survive non-UTF-8 names and escape formulas ----------------------------------------
def test_reports_are_written_for_non_utf8_names_and_escape_formulas(tmp_path) -> None:
    from u2net.evaluation.api import write_reports
    from u2net.evaluation.runner import score_folders
    from u2net.fileio import csv_cell

    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    names = [b"\xff.png", b"=HYPERLINK(1).png", b"ok.png"]
    for folder in ("pred", "gt"):
        for name in names:
            target = os.fsdecode(os.path.join(os.fsencode(tmp_path / folder), name))
            try:
                _png(Path(target))
            except (OSError, UnicodeError):
                pytest.skip("this file system takes UTF-8 names only")
    result = score_folders(tmp_path / "pred", tmp_path / "gt", progress=False)
    out = tmp_path / "out"
    write_reports([result], out, "pred", {"weights": os.fsdecode(b"w\xff.pt")}, 3)
    per_image = (out / "per_image.csv").read_bytes()
    assert b"\n" + b"pred_dir,\xff," in per_image  # the name as it is on disk
    assert b"'=HYPERLINK(1)" in per_image and b",=HYPERLINK" not in per_image
    assert "w\\xff.pt" in (out / "results.md").read_text(encoding="utf-8")
    assert (out / "gallery.png").exists() and (out / "pr_curve.png").exists()
    assert [csv_cell(v) for v in ("=1+1", "+1", "-1", "@x", "a=b", 0.5)] == ["'=1+1", "'+1", "'-1", "'@x", "a=b", 0.5]
