"""The training loop: a short run learns and writes checkpoints; resume is exact; Ctrl-C and NaN are safe."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import u2net
from u2net.data import DatasetCheckError
from u2net.device import autocast_context, pick_device, resolve_precision
from u2net.engine import LRSchedule, NonFiniteLossError, Trainer, TrainerConfig
from u2net.losses import DeepSupervisionLoss

from .conftest import REPO
from .helpers_training import _trainer

CHECKPOINT_KEYS = {"model", "model_name", "model_args", "config", "step", "epoch", "metrics", "optimizer"}
CHECKPOINT_KEYS |= {"scaler", "rng", "preprocessing", "format_version"}


def _stop_at(trainer: Trainer, step: int) -> None:
    """Make ``trainer`` behave as if Ctrl-C was pressed during step ``step``."""
    base = trainer.loss_fn

    def interrupting(outputs, target):
        if trainer.step == step - 1:
            trainer._request_stop(signal.SIGINT, None)  # what the SIGINT handler calls
        return base(outputs, target)

    trainer.loss_fn = interrupting


def test_short_run_writes_self_describing_checkpoints(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=4, val_every=2)
    metrics = trainer.fit()
    assert set(metrics) >= {"mae", "max_f"} and 0 <= metrics["mae"] <= 1
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert set(last) >= CHECKPOINT_KEYS
    assert last["step"] == 4 and last["model_name"] == "u2netp" and last["config"] == {"note": "t"}
    assert last["metrics"] == metrics and last["preprocessing"]["image_size"] == 48
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # evaluate/export need only the path: the model rebuilds itself and gives the same outputs
    model = u2net.load_model(tmp_path / "checkpoints" / "last.pt")
    x = torch.randn(1, 3, 48, 48)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], trainer.model(x)[0].contiguous())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_is_bit_exact(tiny_synthetic, tmp_path, schedule: str) -> None:
    straight = _trainer(tiny_synthetic, tmp_path / "straight", max_steps=6, val_every=3, schedule=schedule)
    straight.fit()
    if schedule == "constant":  # a run of K steps, then continued to 2K
        first = _trainer(tiny_synthetic, tmp_path / "resumed", max_steps=3, val_every=3, schedule=schedule)
    else:  # a 2K-step run interrupted after step K
        first = _trainer(tiny_synthetic, tmp_path / "resumed", max_steps=6, val_every=3, schedule=schedule)
        _stop_at(first, 3)
    first.fit()
    assert first.step == 3
    resumed = _trainer(tiny_synthetic, tmp_path / "resumed", max_steps=6, val_every=3, schedule=schedule)
    torch.manual_seed(1234)  # a different global RNG state before resuming must not matter
    resumed.fit(ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.pt"))
    assert resumed.step == 6
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]
    assert straight.metrics == resumed.metrics


def test_resume_takes_this_runs_optimizer_settings(tiny_synthetic, tmp_path) -> None:
    _trainer(tiny_synthetic, tmp_path, max_steps=2, val_every=0, validate_at_start=False).fit()
    last = str(tmp_path / "checkpoints" / "last.pt")
    # e.g. after a NaN: resume with a lower optim.lr (and now a weight decay); the schedule (2 warm-up
    # steps, cosine over 4) applies to the new rate, and the Adam moments are the checkpoint's.
    resumed = _trainer(
        tiny_synthetic, tmp_path, max_steps=4, val_every=0, validate_at_start=False, lr=1e-4, weight_decay=0.05
    )
    resumed.restore(last)
    group = resumed.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.05 and group["lr"] == 1e-4
    assert resumed.optimizer.state_dict()["state"]  # the moments came back
    resumed.fit(ckpt_path=last)
    cosine_at_3 = LRSchedule("cosine", warmup_steps=2).factor(3, 4)  # the rate of the last step taken
    group = resumed.optimizer.param_groups[0]  # load_state_dict made new group dicts
    assert resumed.step == 4 and group["lr"] == pytest.approx(1e-4 * cosine_at_3)
    assert group["weight_decay"] == 0.05


def test_a_new_run_does_not_overwrite_earlier_checkpoints(tiny_synthetic, tmp_path) -> None:
    _trainer(tiny_synthetic, tmp_path, max_steps=1, validate_at_start=False).fit()
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    again = _trainer(tiny_synthetic, tmp_path, max_steps=1, validate_at_start=False)
    with pytest.raises(FileExistsError, match="holds checkpoints of an earlier run .*ckpt_path=.*trainer.overwrite"):
        again.fit()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before
    # asked for explicitly, it starts afresh (here also without validation images in TensorBoard)
    fresh = _trainer(tiny_synthetic, tmp_path, max_steps=1, validate_at_start=False, overwrite=True, image_log_count=0)
    fresh.fit()
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() != before


def test_trainer_settings_are_checked(tiny_synthetic, tmp_path) -> None:
    for bad in ({"log_every": 0}, {"grad_accum": 0}, {"val_every": -1}, {"monitor_mode": "lowest"}):
        with pytest.raises(ValueError, match=f"trainer.{next(iter(bad))}"):
            TrainerConfig(**bad)
    assert TrainerConfig(monitor="mae").monitor_mode == "min" and TrainerConfig(monitor="max_f").monitor_mode == "max"
    with pytest.raises(ValueError, match="trainer.monitor='maxf' is not a validation metric; one of mae, max_f"):
        _trainer(tiny_synthetic, tmp_path, max_steps=1, monitor="maxf").fit()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_synthetic, tmp_path) -> None:
    base = DeepSupervisionLoss()
    calls = {"n": 0}

    def exploding(outputs, target):
        calls["n"] += 1
        total, parts = base(outputs, target)
        return (total * float("nan"), parts) if calls["n"] == 4 else (total, parts)

    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=6, loss_fn=exploding, val_every=2)
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 4.*last saved checkpoint"):
        trainer.fit()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_crash_before_the_update_saves_last_pt_first(tiny_synthetic, tmp_path) -> None:
    # e.g. a disk error in the middle of the run: the steps since the last validation are kept
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=10, val_every=4)
    base = trainer.loss_fn

    def failing(outputs, target):
        if trainer.step == 6:  # during step 7, before its update; the last validation saved step 4
            raise OSError("disk went away")
        return base(outputs, target)

    trainer.loss_fn = failing
    with pytest.raises(OSError, match="disk went away"):
        trainer.fit()
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 6
    for key, value in trainer.module.state_dict().items():
        assert torch.equal(last["model"][key], value), key


def _deleting_at(trainer: Trainer, step: int, files: list) -> None:
    """Make ``files`` disappear during step ``step`` (after its batch was read)."""
    base = trainer.loss_fn

    def deleting(outputs, target):
        if trainer.step == step - 1:
            for path in files:
                path.unlink(missing_ok=True)
        return base(outputs, target)

    trainer.loss_fn = deleting


def test_a_file_gone_mid_run_is_skipped_with_a_warning(tiny_synthetic, tmp_path, capfd) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    trainer = _trainer(root, tmp_path / "run", max_steps=8, val_every=0, validate_at_start=False)
    gone = sorted((root / "DUTS-TR" / "DUTS-TR-Image").iterdir())[0]
    _deleting_at(trainer, 1, [gone])
    trainer.fit()
    assert trainer.step == 8  # 8 steps of 4 from 24 pairs: every pair is drawn, the gone one skipped
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 1 and str(gone) in warnings[0]


def test_too_many_files_gone_stop_with_a_clear_error_and_last_pt(tiny_synthetic, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    trainer = _trainer(root, tmp_path / "run", max_steps=8, val_every=0, validate_at_start=False)
    _deleting_at(trainer, 2, list((root / "DUTS-TR" / "DUTS-TR-Mask").iterdir()))
    with pytest.raises(DatasetCheckError, match="training pairs became unreadable during training"):
        trainer.fit()
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2


def test_stop_request_saves_and_returns(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=50, val_every=0)
    _stop_at(trainer, 3)
    trainer.fit()
    assert trainer.step == 3  # the step in flight finishes, then it stops
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 3


def test_bf16_and_accumulation_and_clipping(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=2, precision="bf16", grad_accum=2, grad_clip=1.0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert trainer.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_precision_and_schedules() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("auto", cpu) in ("fp32", "bf16")
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        autocast_context(cpu, "fp16")
    warm = LRSchedule("cosine", warmup_steps=10, min_ratio=0.1)
    assert warm.factor(0, 110) == 0.0 and warm.factor(5, 110) == 0.5 and warm.factor(10, 110) == 1.0
    assert warm.factor(60, 110) == pytest.approx(0.55) and warm.factor(110, 110) == pytest.approx(0.1)
    # A time budget half spent at step 20 of 110: the decay follows the time, further along than the steps.
    assert warm.factor(20, 110, time_fraction=0.5) == pytest.approx(0.55)
    assert warm.factor(60, 110, time_fraction=0.1) == pytest.approx(0.55)
    poly = LRSchedule("poly", power=1.0)
    assert poly.factor(50, 100) == pytest.approx(0.5) and poly.factor(10, 100, time_fraction=1.5) == 0.0
    assert LRSchedule("constant").factor(7, 10, time_fraction=0.9) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        LRSchedule("step")


def test_the_schedule_decays_over_the_time_budget(tiny_synthetic, tmp_path) -> None:
    # trainer.max_minutes=1 with 30 s spent at step 3 of 1000: the cosine is half-way by time, not at 0.3 %
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=1000, lr=1e-3, max_minutes=1.0)
    trainer.schedule = LRSchedule("cosine")
    trainer.step, trainer.train_seconds = 3, 30.0
    trainer._apply_schedule()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    trainer.cfg.max_minutes = 0  # no budget: by steps
    trainer._apply_schedule()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * LRSchedule("cosine").factor(3, 1000))


def _train_cli(tmp_path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"paths.data_dir={tmp_path / 'data'}",
        "data.synthetic.num_train=16",
        "data.synthetic.num_val=4",
        "data.image_size=48",
        "data.crop_size=40",
        "data.num_workers=0",
        "data.batch_size=4",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]


@pytest.mark.subprocess
def test_train_script_ctrl_c_then_resume(tmp_path) -> None:
    proc = subprocess.Popen(
        _train_cli(tmp_path, "trainer.max_steps=1000", "trainer.val_every=0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: proc.stdout.read(1), "")), daemon=True)
    reader.start()
    deadline = time.time() + 240
    while not re.search(r"\| +[2-9]\d*/1000", "".join(output)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0, "".join(output)[-2000:]
    reader.join(timeout=10)
    text = "".join(output)
    assert "Interrupted: saved" in text and "Traceback" not in text
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    stopped_at = torch.load(last, weights_only=True)["step"]
    assert stopped_at >= 2

    resumed = subprocess.run(
        _train_cli(tmp_path, f"trainer.max_steps={stopped_at + 2}", f"ckpt_path={last}", "trainer.val_every=1"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = torch.load(last, weights_only=True)
    assert state["step"] == stopped_at + 2 and state["config"]["data"]["batch_size"] == 4
    assert f"done at step {stopped_at + 2}" in resumed.stdout


def test_offline_weights_and_missing_cuda_are_user_errors(tmp_path, monkeypatch) -> None:
    from hydra.errors import InstantiationException

    from u2net.models import WeightsDownloadError, create_model
    from u2net.tasks import user_error

    monkeypatch.setenv("U2NET_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr("u2net.models.pretrained.download_file", lambda url, *a, **k: _raise(OSError("no network")))
    with pytest.raises(WeightsDownloadError, match="could not download u2net.pth for 'u2net.duts' \\(offline?") as info:
        create_model("u2net", weights="u2net.duts")  # not bundled (u2netp.duts is)
    wrapped = InstantiationException("Error in call to target 'u2net.models.factory.create_model'")
    wrapped.__cause__ = info.value  # how Hydra hands it to train.py
    assert user_error(wrapped) is info.value  # train.py prints it as one line
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available; use the CPU .*trainer.device=cpu"):
            pick_device("cuda")


def _raise(exc: Exception):
    raise exc


@pytest.mark.subprocess
def test_train_script_reports_bad_dataset_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "data=ecssd",
            f"paths.data_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "error: dataset ECSSD: image folder" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
def test_train_script_fine_tunes_from_official_weights(tmp_path) -> None:
    source = u2net.create_model("u2netp")
    official = tmp_path / "u2netp.pth"  # as saved by PyTorch 0.4: no num_batches_tracked
    torch.save({k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}, official)
    done = subprocess.run(
        _train_cli(tmp_path, f"model.weights={official}", "trainer.max_steps=1", "trainer.val_every=1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["weights"] == str(official)
    # one Adam step moves each weight by at most ~lr: the run started from the official weights
    start = source.state_dict()["stage1.rebnconvin.conv_s1.weight"]
    assert (state["model"]["stage1.rebnconvin.conv_s1.weight"] - start).abs().max() < 2e-3

    wrong = tmp_path / "u2net_wrong.pth"
    torch.save({"stage1.rebnconv1.conv_s1.weight": torch.zeros(32, 64, 3, 3)}, wrong)
    failed = subprocess.run(
        _train_cli(tmp_path, f"model.weights={wrong}", f"hydra.run.dir={tmp_path / 'run2'}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1
    last_line = failed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {wrong}: does not fit model 'u2netp'") and "missing" in last_line
    assert "Traceback" not in failed.stderr


def test_profiler_writes_a_trace(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, max_steps=4, val_every=0, profile_steps=1)
    trainer.fit()
    traces = list((tmp_path / "tensorboard" / "profiler").glob("*.pt.trace.json*"))
    assert traces and traces[0].stat().st_size > 0
