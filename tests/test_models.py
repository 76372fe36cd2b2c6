"""The models equal the original U²-Net: state-dict keys and shapes, numbers, and weight loading."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import replace

import pytest
import torch

import u2net
from u2net.models import (
    PretrainedCfg,
    U2Net,
    WeightsMismatchError,
    download_weights,
    infer_architecture,
    load_model,
    load_state_dict,
    load_weights,
)
from u2net.models.pretrained import PRETRAINED, download_file, sha256_of

from .conftest import ASSETS

PARAMETERS = {"u2net": 44_009_869, "u2netp": 1_131_181}


def _reference_keys(name: str) -> list[tuple[str, list[int]]]:
    with open(ASSETS / f"{name}_state_dict_keys.tsv") as f:
        return [(row["key"], eval(row["shape"])) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.parametrize("name", ["u2net", "u2netp"])
def test_state_dict_matches_original(name: str) -> None:
    model = u2net.create_model(name)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _reference_keys(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


def test_list_models_and_unknown_name() -> None:
    assert {"u2net", "u2netp"} <= set(u2net.list_models())
    assert u2net.list_models("u2netp") == ["u2netp"]
    with pytest.raises(ValueError, match="unknown model 'u3net'.*u2netp"):
        u2net.create_model("u3net")


@pytest.fixture(scope="module")
def parity() -> dict:
    return torch.load(ASSETS / "u2netp_parity.pt", weights_only=True)


@pytest.mark.parametrize("case", ["square", "odd"])
def test_numerical_parity_with_original_float64(parity: dict, case: str) -> None:
    model = u2net.create_model("u2netp")
    load_state_dict(model, parity["state_dict"])
    model.double().eval()
    with torch.no_grad():
        outputs = model(parity[f"input_{case}"])
    expected = parity[f"outputs_{case}"]
    assert len(outputs) == 7
    for i, logits in enumerate(outputs):
        assert logits.shape == expected[i].shape
        torch.testing.assert_close(torch.sigmoid(logits), expected[i], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (64, 17)])
def test_any_input_size_gives_seven_full_size_logit_maps(size: tuple[int, int]) -> None:
    model = u2net.create_model("u2netp").eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outputs = model(x)
    assert len(outputs) == 7
    assert all(o.shape == (2, 1, *size) for o in outputs)
    # logits, not probabilities: the sigmoid lives in the loss and in inference
    assert any((o < 0).any() or (o > 1).any() for o in outputs)


def test_custom_stage_table() -> None:
    stages = {
        "encoder": [(5, 3, 8, 16, False), (4, 16, 8, 16, False), (3, 16, 8, 16, True)],
        "decoder": [(3, 32, 8, 16, False), (4, 32, 8, 16, False)],
    }
    model = u2net.create_model("u2netp", stages=stages)
    outputs = model(torch.randn(1, 3, 40, 30))
    assert len(outputs) == 4 and all(o.shape == (1, 1, 40, 30) for o in outputs)
    assert model.model_args["stages"]["encoder"][0]["height"] == 5
    rebuilt = u2net.create_model("u2netp", **model.model_args)
    load_state_dict(rebuilt, model.state_dict())
    with pytest.raises(ValueError, match="K - 1 decoder rows"):
        U2Net({"encoder": stages["encoder"], "decoder": stages["decoder"][:1]})
    # a row that does not fit its neighbours is named at construction, not met as a shape error later
    wrong = {"encoder": stages["encoder"], "decoder": [(3, 24, 8, 16, False), stages["decoder"][1]]}
    with pytest.raises(ValueError, match=r"decoder row 1 \(stage 2d\) takes 24 channels but gets 16 .* = 32"):
        U2Net(wrong)


def test_published_tables_take_other_input_channels() -> None:
    model = u2net.create_model("u2netp", in_ch=4).eval()  # e.g. RGB + depth
    assert model(torch.randn(1, 4, 32, 32))[0].shape == (1, 1, 32, 32)
    assert model.model_args == {"in_ch": 4, "out_ch": 1}
    rebuilt = u2net.create_model("u2netp", **model.model_args)
    load_state_dict(rebuilt, model.state_dict())


def _official_style(model: torch.nn.Module) -> dict:
    # The official u2net.pth was saved by PyTorch 0.4: no num_batches_tracked entries.
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_official_file_without_num_batches_tracked_loads_strictly(tmp_path) -> None:
    source = u2net.create_model("u2netp")
    path = tmp_path / "u2netp.pth"
    torch.save(_official_style(source), path)
    target = load_weights(u2net.create_model("u2netp"), path)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[key], value), key


def test_module_prefix_and_our_checkpoint_load(tmp_path) -> None:
    source = u2net.create_model("u2netp")
    prefixed = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, prefixed)
    ours = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "model_name": "u2netp", "model_args": source.model_args}, ours)
    for path in (prefixed, ours):
        loaded = u2net.create_model("u2netp", weights=path)
        assert torch.equal(loaded.stage1.rebnconvin.conv_s1.weight, source.stage1.rebnconvin.conv_s1.weight)


def test_wrong_architecture_names_the_file(tmp_path) -> None:
    path = tmp_path / "u2netp.pth"
    torch.save(u2net.create_model("u2netp").state_dict(), path)
    with pytest.raises(ValueError, match=r"u2netp\.pth: does not fit model 'u2net'.*shape mismatch"):
        load_weights(u2net.create_model("u2net"), path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable PyTorch weights file"):
        load_weights(u2net.create_model("u2netp"), junk)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights(u2net.create_model("u2netp"), tmp_path / "missing.pth")
    page = tmp_path / "u2net.pth"  # what a download blocked by a quota page leaves behind
    page.write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(ValueError, match="u2net.pth: a web page, not a weights file"):
        load_weights(u2net.create_model("u2net"), page)
    whole = tmp_path / "whole.pt"
    torch.save(u2net.create_model("u2netp"), whole)
    with pytest.raises(ValueError, match=r"whole.pt: holds pickled Python objects.*re-save its state_dict\(\)"):
        load_weights(u2net.create_model("u2netp"), whole)
    with pytest.raises(FileNotFoundError, match=r"u2net.dutss: weights file not found \(or a pretrained tag: u2net"):
        load_weights(u2net.create_model("u2net"), "u2net.dutss")
    with pytest.raises(ValueError, match="u2netp.duts holds u2netp weights; this model is u2net"):
        load_weights(u2net.create_model("u2net"), "u2netp.duts")  # refused before any download


def test_load_model_infers_official_architecture(tmp_path) -> None:
    for name in ("u2net", "u2netp"):
        source = u2net.create_model(name)
        path = tmp_path / f"{name}_official.pth"
        torch.save(_official_style(source), path)
        model = load_model(path)
        assert model.model_name == name and not model.training
        assert infer_architecture(source.state_dict()) == name


def test_download_is_atomic_and_checked(tmp_path, monkeypatch) -> None:
    payload = tmp_path / "remote.pth"
    torch.save(u2net.create_model("u2netp").state_dict(), payload)
    url = payload.as_uri()
    good = download_file(url, tmp_path / "cache" / "a.pth", sha256_of(payload), progress=False)
    assert good.read_bytes() == payload.read_bytes()
    with pytest.raises(ValueError, match="checksum mismatch"):
        download_file(url, tmp_path / "cache" / "b.pth", "0" * 64, progress=False)
    assert not (tmp_path / "cache" / "b.pth").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["a.pth"]  # no temp files left
    page = tmp_path / "page.html"
    page.write_text("<!DOCTYPE html><html>quota exceeded</html>")
    with pytest.raises(ValueError, match="web page"):
        download_file(page.as_uri(), tmp_path / "cache" / "c.pth", progress=False)

    # A pretrained tag resolves through the cache ($U2NET_HOME) and the model loads from it.
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(PRETRAINED, "u2netp.test", PretrainedCfg("u2netp", "u2netp_test.pth", (url,)))
    path = download_weights("u2netp.test", progress=False)
    assert path == tmp_path / "home" / "u2netp_test.pth"
    model = u2net.create_model("u2netp", weights="u2netp.test")
    assert model.model_name == "u2netp"


def test_onnx_export_of_the_same_weights_is_the_fallback(tmp_path, monkeypatch) -> None:
    from u2net.export.onnx import export_onnx

    source = u2net.create_model("u2netp").eval()
    remote = export_onnx(source, tmp_path / "remote" / "u2netp.onnx", input_size=64)
    md5 = hashlib.md5(remote.read_bytes()).hexdigest()
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    quota_page = (tmp_path / "quota.html").as_uri()  # Drive's "quota exceeded" page (not found here)
    cfg = PretrainedCfg("u2netp", "u2netp_test.pth", (quota_page,), onnx_mirror=(remote.as_uri(), "0" * 32))
    monkeypatch.setitem(PRETRAINED, "u2netp.test", cfg)
    with pytest.raises(WeightsMismatchError, match="quota.html.*u2netp.onnx: checksum mismatch \\(expected md5"):
        download_weights("u2netp.test", progress=False)
    monkeypatch.setitem(PRETRAINED, "u2netp.test", replace(cfg, onnx_mirror=(remote.as_uri(), md5)))
    path = download_weights("u2netp.test", progress=False)
    assert path == tmp_path / "home" / "u2netp_test.onnx" and path.read_bytes() == remote.read_bytes()
    model = u2net.create_model("u2netp", weights="u2netp.test").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], source(x)[0], rtol=1e-4, atol=1e-4)
    assert download_weights("u2netp.test", progress=False) == path  # cached: no second download
    path.write_bytes(path.read_bytes()[:-1])  # a cached file that is not that export is refused, kept
    with pytest.raises(WeightsMismatchError, match="u2netp_test.onnx: does not match the MD5"):
        download_weights("u2netp.test", progress=False)
    assert path.exists()
    assert {tag: cfg.onnx_mirror is not None for tag, cfg in PRETRAINED.items() if tag != "u2netp.test"} == {
        "u2net.duts": True,
        "u2netp.duts": True,
        "u2net.human_seg": True,
        "u2net.portrait": False,  # rembg does not publish it
        "u2netp.person": False,  # ours: ships with the package only
    }


def test_pretrained_tags_describe_their_inputs() -> None:
    assert set(u2net.list_pretrained()) >= {"u2net.duts", "u2netp.duts", "u2net.human_seg", "u2net.portrait"}
    for cfg in PRETRAINED.values():
        assert cfg.architecture in u2net.list_models() and cfg.input_size == 320 and cfg.normalization == "max"
