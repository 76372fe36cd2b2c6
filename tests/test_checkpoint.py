"""The checkpoint format (:class:`u2net.models.Checkpoint`) and the one preprocessing definition
(:class:`u2net.data.preprocessing.Preprocessing`), read from every kind of weights."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

import u2net
from u2net.data.transforms import Preprocessing, eval_transform
from u2net.engine import save_checkpoint
from u2net.inference import Predictor
from u2net.models import FORMAT_VERSION, PRETRAINED, Checkpoint, load_checkpoint

from .conftest import TINY_PREPROCESSING, save_tiny_checkpoint

# What the trainer wrote before checkpoints had a format_version (version 0).
VERSION_0_KEYS = {
    *("model", "weights_source", "model_name", "model_args", "preprocessing", "config", "trainer", "step"),
    *("epoch", "metrics", "best", "best_metrics", "best_source", "initial_metrics", "ema", "train_seconds"),
    *("history", "optimizer", "scaler", "rng"),
}


@functools.cache  # one training step of U²-Net†, shared (the tests only read it)
def _training_checkpoint(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    model = u2net.create_model("u2netp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 64, 64))[0].mean().backward()
    optimizer.step()
    return Checkpoint(
        model=model.state_dict(),
        model_name="u2netp",
        model_args=dict(model.model_args),
        preprocessing=Preprocessing(image_size=48, normalization="standard"),
        config={"note": "t"},
        trainer={"max_steps": 4},
        step=4,
        epoch=1,
        metrics={"mae": 0.25},
        best=0.25,
        best_metrics={"mae": 0.25},
        best_source="model",
        initial_metrics={"mae": 0.5},
        train_seconds=1.5,
        history=[{"step": 4, "mae": 0.25}],
        optimizer=optimizer.state_dict(),
        scaler={},
        rng={"torch": torch.get_rng_state()},
    )


def _plain_fields(checkpoint: Checkpoint) -> dict:
    return {k: v for k, v in checkpoint.to_dict().items() if k not in ("model", "optimizer", "rng")}


def test_round_trip_keeps_every_field(tmp_path) -> None:
    original = _training_checkpoint()
    path = original.save(tmp_path / "last.pt")
    stored = torch.load(path, weights_only=True)  # plain values only
    assert set(stored) == {*VERSION_0_KEYS, "format_version"} and stored["format_version"] == FORMAT_VERSION
    assert stored["preprocessing"] == {**Preprocessing().to_dict(), "image_size": 48, "normalization": "standard"}
    loaded = load_checkpoint(path)
    assert _plain_fields(loaded) == _plain_fields(original)
    assert loaded.preprocessing == original.preprocessing and loaded.has_training_state
    torch.testing.assert_close(loaded.model, original.model)
    torch.testing.assert_close(loaded.optimizer, original.optimizer)
    torch.testing.assert_close(loaded.rng, original.rng)
    assert loaded.source == str(path)


def test_version_0_files_load_and_unknown_keys_are_kept(tmp_path) -> None:
    state = _training_checkpoint().to_dict()
    del state["format_version"]
    assert set(state) == VERSION_0_KEYS
    state["preprocessing"] = {"image_size": 48, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}  # tuples, partial
    state["note_from_elsewhere"] = [1, 2]
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded.step == 4 and loaded.best_source == "model" and loaded.format_version == FORMAT_VERSION
    assert loaded.preprocessing == Preprocessing(48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert loaded.extra == {"note_from_elsewhere": [1, 2]}
    assert loaded.to_dict()["note_from_elsewhere"] == [1, 2]
    # The trainer's resume reads the same way: a weights-only file has no training state.
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    tiny = load_checkpoint(tmp_path / "tiny.pt")
    assert not tiny.has_training_state and tiny.step == 0 and tiny.preprocessing == Preprocessing(**TINY_PREPROCESSING)


def test_a_newer_format_is_refused_naming_the_file(tmp_path) -> None:
    state = {**_training_checkpoint().to_dict(), "format_version": FORMAT_VERSION + 1}
    torch.save(state, tmp_path / "future.pt")
    expected = f"{tmp_path / 'future.pt'}: checkpoint format version {FORMAT_VERSION + 1}, newer than this u2net reads"
    with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
        load_checkpoint(tmp_path / "future.pt")
    torch.save({**state, "format_version": "1"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"odd\.pt: format_version '1' is not a checkpoint format version"):
        load_checkpoint(tmp_path / "odd.pt")
    torch.save({**state, "format_version": 1, "preprocessing": {"size": 320}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: its stored preprocessing is not valid \(unknown preprocessing"):
        load_checkpoint(tmp_path / "bad.pt")


def test_engine_save_checkpoint_writes_the_format(tmp_path) -> None:
    state = _training_checkpoint().to_dict()
    del state["format_version"]
    save_checkpoint(state, tmp_path / "a.pt")
    assert torch.load(tmp_path / "a.pt", weights_only=True)["format_version"] == FORMAT_VERSION
    with pytest.raises(ValueError, match="holds no state dict"):
        save_checkpoint({"step": 1}, tmp_path / "b.pt")
    assert not (tmp_path / "b.pt").exists()


def test_build_model_rebuilds_the_weights(tmp_path) -> None:
    source = save_tiny_checkpoint(tmp_path / "tiny.pt").eval()
    model = load_checkpoint(tmp_path / "tiny.pt").build_model()
    assert model.model_name == "u2netp" and not model.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], source(x)[0])
    # No name stored (an official file): told by the shapes; wrapper prefixes are stripped.
    official = Checkpoint(model={f"module.{k}": v for k, v in source.state_dict().items()})
    assert official.build_model().model_name == "u2netp"
    wrong = Checkpoint(model=source.state_dict(), model_name="u2net", source="wrong.pt")
    with pytest.raises(ValueError, match="wrong.pt: does not fit model 'u2net'"):
        wrong.build_model()


def test_preprocessing_is_one_validated_value() -> None:
    default = Preprocessing()
    assert default == Preprocessing.from_dict({}) == Preprocessing.from_dict(dict(default))
    assert dict(default) == {
        "image_size": 320,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "normalization": "max",
        "interpolation": "linear",
    }
    assert default["image_size"] == 320 and "mean" in default and "model" not in default  # reads like the old dicts
    assert default.to_dict()["mean"] == [0.485, 0.456, 0.406]
    assert Preprocessing.from_metadata({"model_name": "u2netp"}) is None
    assert Preprocessing.from_metadata({"image_size": 64, "model_name": "u2netp"}) == Preprocessing(64)
    assert eval_transform(**default).output_size == 320
    for bad, message in (
        ({"normalization": "zscore"}, "normalization must be 'max' or 'standard'"),
        ({"interpolation": "nearest"}, "interpolation must be one of"),
        ({"image_size": 0}, "image_size must be positive"),
        ({"mean": [0.5, 0.5]}, "one value per channel"),
        ({"size": 320}, r"unknown preprocessing keys \['size'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            Preprocessing.from_dict(bad)


def test_preprocessing_comes_from_the_tag_config(monkeypatch) -> None:
    own = Preprocessing(image_size=288, normalization="standard", interpolation="area")
    assert PRETRAINED["u2netp.duts"].preprocessing == Preprocessing() and PRETRAINED["u2netp.duts"].input_size == 320
    monkeypatch.setitem(PRETRAINED, "u2netp.duts", dataclasses.replace(PRETRAINED["u2netp.duts"], preprocessing=own))
    assert load_checkpoint("u2netp.duts").preprocessing == own  # the bundled ONNX file itself names none
    predictor = Predictor.from_path("u2netp.duts", device="cpu", backend="pytorch")
    assert predictor.preprocessing == own and predictor.input_size == 288
    sized = Predictor.from_path("u2netp.duts", device="cpu", image_size=128, backend="pytorch")
    assert sized.preprocessing == dataclasses.replace(own, image_size=128)
    # ONNX Runtime runs the file itself: the config's preprocessing at the file's fixed input size
    onnx = Predictor.from_path("u2netp.duts", device="cpu", backend="onnxruntime")
    assert onnx.preprocessing == dataclasses.replace(own, image_size=320)
    model = u2net.create_model("u2netp", weights="u2netp.duts")
    assert model.weights_input_size == 288


def test_preprocessing_comes_from_a_checkpoint_or_onnx_metadata(tmp_path) -> None:
    from u2net.export.onnx import export_onnx

    source = save_tiny_checkpoint(tmp_path / "tiny.pt")
    assert Predictor.from_path(tmp_path / "tiny.pt", device="cpu").preprocessing == Preprocessing(**TINY_PREPROCESSING)
    torch.save(source.state_dict(), tmp_path / "official.pth")  # says nothing: the defaults
    assert load_checkpoint(tmp_path / "official.pth").preprocessing is None
    assert Predictor.from_path(tmp_path / "official.pth", device="cpu").preprocessing == Preprocessing()
    stored = Preprocessing(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), normalization="standard")
    metadata = {k: v for k, v in stored.to_dict().items() if k != "image_size"}
    path = export_onnx(source.eval(), tmp_path / "tiny.onnx", input_size=64, metadata=metadata)
    assert load_checkpoint(path).preprocessing == stored  # imported back into PyTorch
    assert Predictor.from_path(path).preprocessing == stored  # run with ONNX Runtime


def test_predictor_reads_a_checkpoint_once(tmp_path, monkeypatch) -> None:
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    Predictor.from_path(tmp_path / "tiny.pt", device="cpu")
    assert calls == [tmp_path / "tiny.pt"]
