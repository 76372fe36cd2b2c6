"""The trainer's parts: model selection (best.pt, EMA, history) and its checkpoint state, the loggers that
configs/logger builds, and the distributed helpers (model wrapping, the data handshake)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import u2net
from u2net.engine import LRSchedule, Trainer, TrainerConfig, WeightEMA
from u2net.engine.distributed import DistContext, gradient_sync, rank_device, share_data, wrap_model
from u2net.engine.logger import NullLogger, TensorBoardLogger, logger_from_options, prediction_grid
from u2net.engine.selection import ModelSelection
from u2net.losses import DeepSupervisionLoss
from u2net.models import Checkpoint

from .helpers_training import _data, _free_port

# The checkpoint fields ModelSelection owns: the names (and meaning) the trainer always wrote.
SELECTION_FIELDS = {"metrics", "best", "best_metrics", "best_source", "initial_metrics", "ema", "history"}


def _ema_selection(decay: float = 0.5) -> tuple[ModelSelection, nn.Module]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    return ModelSelection("mae", "min", WeightEMA(module, decay)), module


# ---------------------------------------------------------------------------------------------- selection
def test_the_start_is_the_first_candidate_and_later_ones_must_beat_it() -> None:
    selection, _ = _ema_selection()
    assert selection.start({"mae": 0.3, "max_f": 0.5}, step=0, minutes=0.0)
    assert (selection.best, selection.best_source, selection.best_metrics) == (0.3, "start", {"mae": 0.3, "max_f": 0.5})
    selection.metrics, selection.ema_metrics = {"mae": 0.4}, {"mae": 0.35}
    assert selection.choose(step=2, minutes=1.0) is None and selection.best_source == "start"
    selection.metrics, selection.ema_metrics = {"mae": 0.2}, {"mae": 0.25}
    assert selection.choose(step=4, minutes=2.0) == "model" and selection.best == 0.2
    selection.metrics, selection.ema_metrics = {"mae": 0.15}, {"mae": 0.1}  # both beat it: the better one wins
    assert selection.choose(step=6, minutes=3.0) == "ema"
    assert (selection.best, selection.best_source, selection.best_metrics) == (0.1, "ema", {"mae": 0.1})
    selection.metrics, selection.ema_metrics = {"mae": 0.1}, {"mae": 0.1}  # a tie is no improvement
    assert selection.choose(step=8, minutes=4.0) is None
    assert [row["step"] for row in selection.history] == [0, 2, 4, 6, 8]
    assert selection.history[0] == {"step": 0, "minutes": 0.0, "mae": 0.3, "max_f": 0.5}  # no EMA scores yet
    assert selection.history[-1] == {"step": 8, "minutes": 4.0, "mae": 0.1, "ema_mae": 0.1}


def test_max_mode_a_missing_metric_and_no_validation_set() -> None:
    selection = ModelSelection("max_f", "max")
    assert not selection.start({}, step=0, minutes=0.0) and selection.history == []  # no validation set
    selection.metrics = {"max_f": 0.5}
    assert selection.choose(1, 0.1) == "model"
    selection.metrics = {"max_f": 0.4}
    assert selection.choose(2, 0.2) is None and selection.best == 0.5
    assert not selection.is_better(None)
    with pytest.raises(ValueError, match="min or max"):
        ModelSelection("mae", "auto")


def test_selection_state_round_trips_through_a_checkpoint() -> None:
    selection, module = _ema_selection()
    selection.start({"mae": 0.3}, step=0, minutes=0.0)
    with torch.no_grad():
        module[0].weight.add_(1.0)
    selection.ema.update(module)
    selection.metrics, selection.ema_metrics = {"mae": 0.25}, {"mae": 0.2}
    selection.choose(step=3, minutes=0.5)
    fields = selection.checkpoint_fields()
    assert set(fields) == SELECTION_FIELDS
    stored = Checkpoint(model=module.state_dict(), optimizer={"state": {}, "param_groups": []}, **fields).to_dict()
    for key in SELECTION_FIELDS - {"ema"}:
        assert stored[key] == getattr(selection, key), key
    assert stored["ema"]["updates"] == 1 and stored["best_source"] == "ema"
    state = Checkpoint.from_dict(torch_round_trip(stored), source="last.pt")
    resumed, fresh_module = _ema_selection()
    resumed.check(state, "last.pt")
    resumed.load(state, fresh_module)
    for key in SELECTION_FIELDS - {"ema"}:
        assert getattr(resumed, key) == getattr(selection, key), key
    assert resumed.ema.updates == 1
    for key, value in selection.ema.module.state_dict().items():
        torch.testing.assert_close(resumed.ema.module.state_dict()[key], value, rtol=0, atol=0)
    # best.pt's file: the best weights' scores in "metrics", the rest as in last.pt
    assert selection.checkpoint_fields(selection.best_metrics)["metrics"] == {"mae": 0.2}


def torch_round_trip(state: dict) -> dict:
    """``state`` written and read back as the trainer's files are."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resuming_a_run_without_ema_starts_the_average_at_the_weights() -> None:
    plain, module = ModelSelection("mae", "min"), nn.Linear(2, 1)
    state = Checkpoint(
        model=module.state_dict(), optimizer={"state": {}, "param_groups": []}, **plain.checkpoint_fields()
    )
    assert state.ema is None
    selection, _ = _ema_selection(decay=0.9)
    selection.load(state, module)
    assert selection.ema.decay == 0.9 and selection.ema.updates == 0
    torch.testing.assert_close(selection.ema.module.weight, module.weight)
    other = Checkpoint.from_dict({"model": {}, "ema": {"model": {"weight": torch.zeros(1)}, "updates": 1}}, "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt \(its EMA weights\)"):
        selection.check(other, "x.pt")


def test_the_validation_line_and_summary() -> None:
    selection, _ = _ema_selection()
    assert selection.summary() == ""
    selection.start({"mae": 0.3, "max_f": 0.5}, 0, 0.0)
    selection.metrics, selection.ema_metrics = {"mae": 0.2, "max_f": 0.6}, {"mae": 0.25, "max_f": 0.55}
    selection.choose(2, 1.0)
    line = selection.validation_line(2)
    assert line.startswith("val step 2 (start in brackets): mae 0.2000 (0.3000) max_f 0.6000 (0.5000)")
    assert "| ema: mae 0.2500 (0.3000)" in line and line.endswith("| best.pt: model (mae 0.2000)")
    assert selection.summary().splitlines()[1:] == [
        "  mae                  0.3000 -> 0.2000",
        "  max_f                0.5000 -> 0.6000",
    ]


# ---------------------------------------------------------------------------------------------- loggers
def _events(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["images"]:
            found.setdefault(tag, []).extend((e.step, (e.width, e.height)) for e in events.Images(tag))
    return found


def test_the_tensorboard_logger_writes_scalars_and_images_once_opened(tmp_path) -> None:
    logger = TensorBoardLogger(image_log_count=2)
    logger.log_scalars(1, {"train/loss": 1.0})  # not opened (a rank other than 0): nothing
    assert not (tmp_path / "tensorboard").exists()
    logger.open(tmp_path)
    logger.log_scalars(1, {"train/loss": 0.5, "train/lr": 1e-3})
    logger.log_scalars(2, {"train/loss": 0.25})
    images, masks, probs = torch.zeros(2, 3, 8, 6), torch.ones(3, 1, 8, 6), torch.full((3, 1, 8, 6), 0.5)
    logger.log_predictions(2, images, masks, probs, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    logger.close()
    logger.log_scalars(3, {"train/loss": 0.1})  # after close: nothing
    events = _events(tmp_path / "tensorboard")
    assert events["train/loss"] == [(1, 0.5), (2, 0.25)] and events["train/lr"] == [(1, pytest.approx(1e-3))]
    assert events["val/input_gt_prediction"] == [(2, (12, 24))]  # 2 columns of 6 px, 3 rows of 8 px
    assert logger.trainer_options() == {"tensorboard": True, "image_log_count": 2}
    with pytest.raises(ValueError, match="image_log_count"):
        TensorBoardLogger(-1)


def test_the_prediction_grid_un_normalises_the_inputs() -> None:
    images = torch.full((1, 3, 2, 2), -1.0)  # (x - 0.5) / 0.5 = -1: black
    grid = prediction_grid(images, torch.ones(4, 1, 2, 2), torch.full((4, 1, 2, 2), 0.25), [0.5] * 3, [0.5] * 3)
    assert grid.shape == (3, 6, 2)
    assert grid[:, :2].eq(0).all() and grid[:, 2:4].eq(1).all() and grid[:, 4:].eq(0.25).all()


def test_the_null_logger_writes_nothing(tmp_path) -> None:
    logger = NullLogger()
    logger.open(tmp_path)
    logger.log_scalars(1, {"train/loss": 1.0})
    logger.log_predictions(
        1, torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), [0] * 3, [1] * 3
    )
    logger.close()
    assert list(tmp_path.iterdir()) == [] and logger.image_log_count == 0
    assert logger.trainer_options() == {"tensorboard": False, "image_log_count": 0}
    assert type(logger_from_options(False, 4)) is NullLogger
    assert logger_from_options(True, 3).image_log_count == 3


class RecordingLogger(NullLogger):
    """Remembers what the trainer asked it to log."""

    image_log_count = 2

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def open(self, run_dir) -> None:
        self.calls.append(("open", str(run_dir)))

    def log_scalars(self, step, scalars) -> None:
        self.calls.append(("scalars", step, tuple(scalars)))

    def log_predictions(self, step, images, masks, probs, mean, std) -> None:
        self.calls.append(("predictions", step, images.shape[0]))

    def close(self) -> None:
        self.calls.append(("close",))


def test_the_trainer_only_calls_its_logger(tiny_synthetic, tmp_path) -> None:
    torch.manual_seed(0)
    model = u2net.create_model("u2netp")
    config = TrainerConfig(
        out_dir=str(tmp_path), max_steps=2, val_every=2, log_every=1, progress=False, device="cpu", precision="fp32"
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    logger = RecordingLogger()
    trainer = Trainer(model, DeepSupervisionLoss(), optimizer, LRSchedule("constant"), _data(tiny_synthetic), config,
                      logger=logger)  # fmt: skip
    trainer.fit()
    assert not (tmp_path / "tensorboard").exists()  # config.tensorboard is true: the logger given wins
    assert logger.calls[0] == ("open", str(tmp_path)) and logger.calls[-1] == ("close",)
    steps = [(call[1], call[2][0]) for call in logger.calls if call[0] == "scalars"]
    assert steps == [(0, "val/mae"), (1, "train/loss"), (2, "train/loss"), (2, "val/mae")]
    train_tags = next(call[2] for call in logger.calls if call[0] == "scalars" and call[1] == 1)
    assert train_tags[:3] == ("train/loss", "train/loss_fused", "train/loss_side1")
    assert train_tags[-2:] == ("train/lr", "train/images_per_s")
    assert [call for call in logger.calls if call[0] == "predictions"] == [("predictions", 0, 2), ("predictions", 2, 2)]


# ---------------------------------------------------------------------------------------------- distributed
def test_without_torchrun_the_model_is_not_wrapped() -> None:
    plain, cpu = DistContext(), torch.device("cpu")
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert rank_device(plain, cpu) == cpu and rank_device(plain, torch.device("cuda")) == torch.device("cuda")
    bare, model = wrap_model(module, plain, cpu, sync_batchnorm=True)  # SyncBatchNorm only under torchrun
    assert bare is module and model is module and isinstance(module[1], nn.BatchNorm2d)
    assert isinstance(gradient_sync(plain, model, last=False), contextlib.nullcontext)
    assert rank_device(DistContext(1, 2, 1, enabled=True), torch.device("cuda")) == torch.device("cuda", 1)


def test_under_torchrun_the_model_is_wrapped_and_the_data_shared(tiny_synthetic, monkeypatch) -> None:
    """In-process, one rank over gloo: DDP wrapping, no_sync on all but the last micro-batch, rank 0's pairs."""
    import torch.distributed as dist

    from u2net.engine.distributed import setup_distributed

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**env, "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    try:
        ctx = setup_distributed("cpu")
        assert ctx.enabled and ctx.is_main
        module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        bare, model = wrap_model(module, ctx, torch.device("cpu"))
        assert bare is module and isinstance(model, nn.parallel.DistributedDataParallel) and model.module is module
        assert isinstance(gradient_sync(ctx, model, last=True), contextlib.nullcontext)
        assert not isinstance(gradient_sync(ctx, model, last=False), contextlib.nullcontext)  # DDP's no_sync
        with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
            wrap_model(module, ctx, torch.device("cpu"), sync_batchnorm=True)
        data = _data(tiny_synthetic)
        share_data(ctx, data, seed=0)
        train, val, _ = data.pairs()
        assert len(train) == 24 and len(val) == 8
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
