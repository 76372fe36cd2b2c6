"""Fine-tuning real weights: BatchNorm restored for folded files, best.pt never worse than the start,
a time budget, an EMA of the weights, and per-stage learning rates."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import u2net
from u2net.engine import LRSchedule, Trainer, TrainerConfig, WeightEMA, param_groups
from u2net.export import export_onnx
from u2net.losses import DeepSupervisionLoss
from u2net.models.batchnorm import conv_bn_pairs, folded_batchnorms, restore_batchnorm

from .conftest import ASSETS, REPO, lively_u2netp
from .helpers_training import _data

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def folded_model(tmp_path_factory) -> torch.nn.Module:
    """A U²-Net† imported from an ONNX file with BatchNorm folded into the convolutions (as rembg's are)."""
    path = export_onnx(lively_u2netp(), tmp_path_factory.mktemp("onnx") / "folded.onnx", input_size=64, dynamic_hw=True)
    return u2net.load_model(path)


def _probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(torch.stack(model(x)))


def test_restore_batchnorm_keeps_eval_outputs_and_matches_train_mode(folded_model) -> None:
    model = copy.deepcopy(folded_model).eval()
    assert len(folded_batchnorms(model)) == len(conv_bn_pairs(model)) == 112  # every REBNCONV of U²-Net†
    g = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(2)]
    unseen = torch.randn(2, 3, 80, 72, generator=g)
    before = _probs(model, unseen)
    assert restore_batchnorm(model, calibration) == 112
    assert _probs(model, unseen).sub(before).abs().max() <= 1e-5  # the eval-mode function is unchanged
    assert not folded_batchnorms(model) and restore_batchnorm(model, calibration) == 0
    # The convolutions carry comparable scales again: each channel's output over the calibration images
    # has unit standard deviation, the BatchNorm weight the channel's former scale.
    conv, bn = conv_bn_pairs(model)[5]
    assert bn.weight.min() < 0.5 * bn.weight.max()
    # Train-mode BatchNorm, on the calibration images, computes the same function as eval mode.
    batch = torch.cat(calibration)
    trained = copy.deepcopy(model).train()
    torch.testing.assert_close(_probs(trained, batch), _probs(model.eval(), batch), atol=1e-4, rtol=0)
    # ... whereas the folded model in train mode is another function altogether.
    assert _probs(copy.deepcopy(folded_model).train(), batch).sub(_probs(folded_model.eval(), batch)).abs().max() > 0.1


@pytest.mark.parametrize("make", [lively_u2netp, lambda: u2net.create_model("u2netp")], ids=["trained", "fresh"])
def test_real_batchnorm_is_left_alone(make) -> None:
    model = make()  # BatchNorm with statistics, or freshly initialised (running variance 1, not 1 - eps)
    state = copy.deepcopy(model.state_dict())
    assert restore_batchnorm(model, [torch.randn(2, 3, 32, 32)]) == 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def _trainer(
    root, out_dir, model, max_steps=2, lr=1e-3, loss_fn=None, data=None, encoder_lr_scale=1.0, **cfg
) -> Trainer:
    optimizer = torch.optim.Adam(param_groups(model, lr, encoder_lr_scale), lr=lr)
    config = TrainerConfig(
        out_dir=str(out_dir), max_steps=max_steps, progress=False, device="cpu", precision="fp32", seed=3, **cfg
    )
    schedule = LRSchedule("constant")
    return Trainer(model, loss_fn or DeepSupervisionLoss(), optimizer, schedule, data or _data(root), config)


def test_trainer_restores_folded_batchnorm_before_the_start_is_scored(folded_model, tiny_synthetic, tmp_path) -> None:
    plain = _trainer(tiny_synthetic, tmp_path / "a", copy.deepcopy(folded_model), max_steps=1, lr=0.0, restore_bn=False)
    plain.fit()
    restored = _trainer(tiny_synthetic, tmp_path / "b", copy.deepcopy(folded_model), max_steps=1, lr=0.0)
    restored.fit()
    assert not folded_batchnorms(restored.module)
    # Same start, within float rounding: restoration does not change what the model computes.
    for key in ("mae", "max_f", "sm"):
        assert restored.selection.initial_metrics[key] == pytest.approx(plain.selection.initial_metrics[key], abs=1e-5)
    # One train-mode step at learning rate 0 only moves the BatchNorm running statistics: restored, they
    # stay about what they were; folded, they turn the model into another one.
    assert abs(restored.metrics["mae"] - restored.selection.initial_metrics["mae"]) < 0.002
    assert abs(plain.metrics["mae"] - plain.selection.initial_metrics["mae"]) > 0.01


def _trained_u2netp() -> torch.nn.Module:
    """The U²-Net† trained on the synthetic set (tests/assets), a model that steps can make worse."""
    return u2net.load_model(ASSETS / "u2netp_synthetic.pt")


def test_best_is_the_start_when_every_step_makes_it_worse(tiny_synthetic, tmp_path) -> None:
    base = DeepSupervisionLoss()

    def towards_inverted_masks(outputs, target):  # every step makes the model worse
        return base(outputs, 1.0 - target)

    model = _trained_u2netp()
    start = copy.deepcopy(model.state_dict())
    data = _data(tiny_synthetic, image_size=128, crop_size=None)
    trainer = _trainer(tiny_synthetic, tmp_path, model, 3, 1e-3, towards_inverted_masks, data, val_every=1)
    final = trainer.fit()
    assert final["mae"] > trainer.selection.initial_metrics["mae"]  # it did get worse
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_source"] == "start" and best["best_metrics"] == trainer.selection.initial_metrics
    for key, value in best["model"].items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=0)
    assert "start -> best" in trainer.selection.summary()


def test_max_minutes_stops_validates_and_saves(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, u2net.create_model("u2netp"), max_steps=1000, max_minutes=1e-5)
    metrics = trainer.fit()
    assert trainer.step == 1 and metrics
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 1 and last["metrics"] == metrics


def test_weight_ema_follows_the_formula() -> None:
    live = torch.nn.Linear(2, 1)
    ema = WeightEMA(live, decay=0.9)
    expected = live.weight.detach().clone()
    for _ in range(5):
        with torch.no_grad():
            live.weight.add_(1.0)
        ema.update(live)
        expected = 0.9 * expected + 0.1 * live.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected)
    assert ema.updates == 5


def test_ema_is_validated_saved_and_resumed_exactly(tiny_synthetic, tmp_path) -> None:
    def run(out_dir, max_steps, ckpt_path=None):
        torch.manual_seed(0)
        trainer = _trainer(tiny_synthetic, out_dir, u2net.create_model("u2netp"), max_steps, ema_decay=0.9, val_every=2)
        trainer.fit(ckpt_path=ckpt_path)
        return trainer

    straight = run(tmp_path / "straight", 4)
    assert straight.selection.ema_metrics and straight.selection.ema.updates == 4
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    assert last["ema"]["updates"] == 4 and last["best_source"] in ("start", "model", "ema")
    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4, ckpt_path=tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key, value in straight.selection.ema.module.state_dict().items():
        torch.testing.assert_close(resumed.selection.ema.module.state_dict()[key], value, rtol=0, atol=0)
    # best.pt holds whichever weights scored best; loading it gives a model that scores that.
    best = torch.load(tmp_path / "straight" / "checkpoints" / "best.pt", weights_only=True)
    model = u2net.create_model("u2netp")
    model.load_state_dict(best["model"])
    assert straight.validate(model)["mae"] == pytest.approx(best["best_metrics"]["mae"], abs=1e-6)
    assert best["metrics"] == best["best_metrics"]


def test_validation_on_a_clock_and_no_resume_from_other_weights(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, u2net.create_model("u2netp"), max_steps=3, ema_decay=0.5)
    trainer.cfg.val_every, trainer.cfg.val_every_minutes = 0, 1e-6  # a mark passed after every step
    trainer.fit()
    history = trainer.selection.history
    assert [row["step"] for row in history] == [0, 1, 2, 3]
    assert all(row["minutes"] > 0 for row in history[1:]) and "ema_mae" in history[-1]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["weights_source"] == "model"
    torch.save(last | {"weights_source": "ema"}, tmp_path / "ema_best.pt")  # as best.pt when the EMA won
    resumed = _trainer(tiny_synthetic, tmp_path / "again", u2net.create_model("u2netp"), max_steps=4)
    with pytest.raises(ValueError, match="holds the ema weights, not the run's own; resume from last.pt"):
        resumed.restore(tmp_path / "ema_best.pt")


def test_encoder_learning_rate_scale_and_freezing(tiny_synthetic, tmp_path) -> None:
    model = u2net.create_model("u2netp")
    groups = {g["name"]: g for g in param_groups(model, 1e-3, encoder_lr_scale=0.1)}
    assert groups["encoder"]["lr"] == pytest.approx(1e-4) and groups["decoder"]["lr"] == 1e-3
    assert len(groups["encoder"]["params"]) + len(groups["decoder"]["params"]) == len(list(model.parameters()))
    frozen = u2net.create_model("u2netp")
    before = copy.deepcopy(frozen.state_dict())
    trainer = _trainer(tiny_synthetic, tmp_path, frozen, encoder_lr_scale=0.0, freeze_bn=True, validate_at_start=False)
    trainer.fit()
    after = frozen.state_dict()
    assert all(
        torch.equal(after[k], v) for k, v in before.items() if k.startswith("stage1.") and "num_batches" not in k
    )
    assert not torch.equal(after["outconv.weight"], before["outconv.weight"])


def test_a_run_at_another_size_than_the_weights_warns(tiny_synthetic, tmp_path) -> None:
    model = u2net.create_model("u2netp", weights="u2netp.duts")  # the bundled weights: made for 320²
    assert model.weights_input_size == 320
    with pytest.warns(UserWarning, match=r"made for 320×320 inputs but this run resizes to 48×48"):
        _trainer(tiny_synthetic, tmp_path, model)


@pytest.mark.subprocess
def test_finetune_preset_on_a_folder_from_the_command_line(tiny_synthetic, tmp_path) -> None:
    # The user's path: bundled weights, their own folders, a time budget; sizes shrunk to keep it quick,
    # which the run must call out (the weights are 320² ones).
    train, run = tiny_synthetic / "DUTS-TR", tmp_path / "run"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=finetune",
        f"data.images={train / 'DUTS-TR-Image'}",
        f"data.masks={train / 'DUTS-TR-Mask'}",
        "data.val_fraction=0.25",
        "data.image_size=64",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.restore_bn_images=8",
        "trainer.max_steps=3",
        "trainer.max_minutes=1000",
        "logger=none",
        f"hydra.run.dir={run}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "made for 320×320 inputs but this run resizes to 64×64" in done.stderr
    assert "restored 112 folded BatchNorm layers" in done.stdout
    assert "start -> best on the validation set" in done.stdout and "(start in brackets)" in done.stdout
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 3 and last["config"]["model"]["weights"] == "u2netp.duts"
    assert [row["step"] for row in last["history"]] == [0, 3] and last["ema"]["updates"] == 3
    # The preset freezes the encoder (params.encoder_lr_scale=0): the EMA of a frozen weight is that weight.
    for key in ("stage1.rebnconvin.conv_s1.weight", "outconv.weight"):
        assert torch.equal(last["model"][key], last["ema"]["model"][key]) == key.startswith("stage1.")
