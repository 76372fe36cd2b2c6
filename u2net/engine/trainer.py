"""The training loop: read it top to bottom in :meth:`Trainer.fit`."""

from __future__ import annotations

import itertools
import math
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from ..data.datamodule import SaliencyDataModule
from ..device import autocast_context, pick_device, resolve_precision
from ..metrics import SaliencyMetrics, evaluate_batch
from ..models.batchnorm import folded_batchnorms, restore_batchnorm
from ..models.checkpoint import Checkpoint
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .config import TrainerConfig
from .distributed import (
    any_rank,
    barrier,
    broadcast_object,
    broadcast_tensors,
    gather_objects,
    gradient_sync,
    rank_device,
    setup_distributed,
    share_data,
    wrap_model,
)
from .ema import WeightEMA
from .logger import RunLogger, logger_from_options
from .precision import MIN_GRADIENT_AGREEMENT, gradient_agreement
from .resume import load_optimizer_state, read_resume_state
from .schedulers import LRSchedule
from .selection import ModelSelection
from .utils import seed_everything


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without touching the saved checkpoints."""


class Trainer:
    """Trains ``model`` with deep supervision on the batches of ``data``.

    ``loss_fn(outputs, target) -> (total, per_output)``; ``optimizer`` is ready-built, its groups'
    rates the base rates that ``schedule`` scales before every step (``None``: constant).
    ``run_config`` is the resolved configuration, stored in every checkpoint so it describes itself.
    ``logger`` (built from configs/logger) gets the scalars and images; ``None``: the one that
    ``config.tensorboard`` and ``config.image_log_count`` describe.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: Optimizer,
        schedule: LRSchedule | None,
        data: SaliencyDataModule,
        config: TrainerConfig,
        run_config: Mapping | None = None,
        logger: RunLogger | None = None,
    ) -> None:
        self.cfg = config
        _warn_on_size_mismatch(model, data)
        device = pick_device(config.device)
        self.dist = setup_distributed(device.type)
        self.device = rank_device(self.dist, device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
        self.precision = resolve_precision(config.precision, self.device)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        module = model.to(self.device)
        if config.channels_last:
            module = module.to(memory_format=torch.channels_last)
        # self.module is the bare model (what checkpoints hold); self.model runs the steps (DDP, compiled).
        self.module, self.model = wrap_model(module, self.dist, self.device, config.sync_batchnorm, config.compile)
        self.loss_fn, self.optimizer, self.schedule, self.data = loss_fn, optimizer, schedule, data
        # This run's optimizer settings per group (rates before the schedule, weight decay, betas, ...):
        # they win over a resumed checkpoint's, so that resuming with other settings takes effect.
        self.group_settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.run_config = dict(run_config or {})
        self.logger = logger if logger is not None else logger_from_options(config.tensorboard, config.image_log_count)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = 0
        ema = WeightEMA(self.module, config.ema_decay) if config.ema_decay > 0 else None
        self.selection = ModelSelection(config.monitor, config.monitor_mode, ema)  # best.pt, EMA, history
        self.val_precision = "fp32" if config.val_precision == "fp32" else self.precision
        self.train_seconds = 0.0  # time spent in training steps (and waiting for their data), resumed too
        self.stop_requested = False
        self._updating = False

    @property
    def metrics(self) -> dict[str, float]:
        """The trained weights' scores at the last validation (what :meth:`fit` returns)."""
        return self.selection.metrics

    # ------------------------------------------------------------------ the loop
    def fit(self, ckpt_path: str | None = None) -> dict[str, float]:
        """Train up to ``max_steps`` optimizer steps (resuming from ``ckpt_path`` if given) and
        return the last validation metrics. Ctrl-C saves ``last.pt`` and returns early."""
        cfg, ctx = self.cfg, self.dist
        self._prepare(ckpt_path)
        start = self.step * cfg.grad_accum
        batches = iter(self.data.train_loader(cfg.seed, start, ctx.rank, ctx.world_size))
        if cfg.validate_at_start and self.step == 0:
            self._validate_start()
        progress = _progress_bar(self.step, cfg.max_steps, cfg.progress and ctx.is_main)
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        profiler = self._profiler()
        try:
            self._train_loop(batches, progress, profiler)
            if self.stop_requested:
                path = self.save("last.pt")
                if ctx.is_main:
                    progress.write(f"Interrupted: saved {path} at step {self.step}. Resume with ckpt_path={path}")
        except Exception as exc:
            self._save_after_crash(exc, progress)
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if profiler is not None:
                profiler.stop()
            progress.close()
            self.logger.close()
        barrier(ctx)
        return self.metrics

    def _prepare(self, ckpt_path: str | None) -> None:
        """Everything before the first step: the checkpoint (read and checked before the data check, which can
        take minutes: a damaged file fails at once), seeds, data, starting weights, precision, the logger."""
        cfg, ctx = self.cfg, self.dist
        self._refuse_overwriting(ckpt_path)
        resume = self._read_resume_state(ckpt_path) if ckpt_path else None  # every rank reads the same file
        seed_everything(cfg.seed + ctx.rank)  # per-rank seeds; DDP broadcasts rank 0's initial weights
        self._setup_data()
        if resume is not None:
            self._apply_resume_state(resume)
        elif cfg.restore_bn:
            self._restore_folded_batchnorm()
        if cfg.precision == "auto" and self.precision != "fp32":
            self._check_low_precision()
        if ctx.is_main:  # the one writer
            self.logger.open(self.out_dir)

    def _train_loop(self, batches, progress, profiler) -> None:
        """Steps until ``max_steps``, the time budget or a stop request; validating and saving on the way."""
        cfg, ctx = self.cfg, self.dist
        images_per_step = self.data.batch_size * cfg.grad_accum * ctx.world_size
        next_val_minutes = self._next_minute_mark()
        while self.step < cfg.max_steps:
            started = time.perf_counter()
            batch_group = self._next_batches(batches)
            if batch_group is None:  # interrupted while waiting for data
                break
            losses = self.train_step(batch_group)
            self.step += 1
            if profiler is not None:
                profiler.step()
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            speed = images_per_step / elapsed
            progress.update(1)
            progress.set_postfix(loss=f"{losses[0]:.4f}", img_s=f"{speed:.2f}")
            if self.step % cfg.log_every == 0 or self.step == 1:
                self._log_train(losses, speed)
            # Rank 0's clock decides for every rank, so that all of them stop and validate together.
            if cfg.max_minutes or next_val_minutes:
                self.train_seconds = broadcast_object(ctx, self.train_seconds)
            minutes = self.train_seconds / 60
            out_of_time = bool(cfg.max_minutes) and minutes >= cfg.max_minutes
            at_mark = next_val_minutes is not None and minutes >= next_val_minutes
            at_end = self.step == cfg.max_steps or out_of_time
            if (cfg.val_every and self.step % cfg.val_every == 0) or at_end or at_mark:
                next_val_minutes = self._next_minute_mark()
                self._validate_and_save(progress)
                if out_of_time:
                    if ctx.is_main:
                        progress.write(f"time budget of {cfg.max_minutes:g} min reached at step {self.step}")
                    break
            elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save("last.pt")
            # All ranks stop together, whichever of them was signalled.
            if any_rank(ctx, self.stop_requested):
                self.stop_requested = True
                break

    def _refuse_overwriting(self, ckpt_path: str | None) -> None:
        """A new run (not a resume) never overwrites the checkpoints of an earlier one in its folder."""
        # Decided by rank 0 (the only writer) and raised on every rank, so that none is left waiting.
        refusal = None
        if self.dist.is_main and not ckpt_path and not self.cfg.overwrite:
            earlier = sorted(p.name for p in self.ckpt_dir.glob("*.pt"))
            if earlier:
                refusal = (
                    f"{self.ckpt_dir} holds checkpoints of an earlier run ({', '.join(earlier)}): resume with "
                    f"ckpt_path={self.ckpt_dir / 'last.pt'}, pick another run folder, or set trainer.overwrite=true"
                )
        refusal = broadcast_object(self.dist, refusal)
        if refusal is not None:
            raise FileExistsError(refusal)

    def _setup_data(self) -> None:
        """Every rank's data: rank 0's list of pairs (see :func:`~u2net.engine.distributed.share_data`)."""
        share_data(self.dist, self.data, self.cfg.seed)

    def train_step(self, batch_group: list[dict]) -> list[float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns [total, fused, side1..]."""
        cfg = self.cfg
        self._train_mode()
        self._apply_schedule()
        self.optimizer.zero_grad(set_to_none=True)
        totals = None
        for i, batch in enumerate(batch_group):
            images, masks = self._to_device(batch)
            with gradient_sync(self.dist, self.model, last=i == len(batch_group) - 1):
                with autocast_context(self.device, self.precision):
                    outputs = self.model(images)
                total, per_output = self.loss_fn(outputs, masks)
                self.scaler.scale(total / len(batch_group)).backward()
            parts = torch.cat([total.detach()[None], per_output.detach()]) / len(batch_group)
            totals = parts if totals is None else totals + parts
        # One host sync per step, after the backward passes are queued (a check right after the
        # forward pass would stall the GPU queue) and before the weights change.
        losses = totals.tolist()
        if any_rank(self.dist, not math.isfinite(losses[0])):
            raise NonFiniteLossError(
                f"loss became {losses[0]} at step {self.step + 1}; training stopped and the last saved "
                f"checkpoint in {self.ckpt_dir} is intact (try a lower optim.lr, trainer.grad_clip or "
                "trainer.precision=fp32)"
            )
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self._updating = True  # from here until the EMA is updated, the weights are half-changed
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.selection.ema is not None:
            self.selection.ema.update(self.module)
        self._updating = False
        return losses

    @torch.no_grad()
    def validate(self, model: nn.Module | None = None, tag: str = "val") -> dict[str, float]:
        """MAE and F-measure of the fused output of ``model`` (default: the trained one) on the
        validation set (empty dict without one); logged under ``tag``."""
        loader = self.data.val_loader(self.dist.rank, self.dist.world_size)
        if loader is None:
            return {}
        model = self.model if model is None else model
        model.eval()
        meter = SaliencyMetrics()
        shown = None
        background_error = 0.0
        count = self.logger.image_log_count
        for batch in loader:
            images, masks = self._to_device(batch)
            with autocast_context(self.device, self.val_precision):
                fused = model(images)[0]
            probs = torch.sigmoid(fused.float())
            evaluate_batch(meter, probs.cpu(), masks.cpu())
            background_error += (masks > 128 / 255).flatten(1).float().mean(1).sum().item()
            if shown is None and count > 0:
                shown = (images[:count], masks, probs)
        # Each rank scored its share of the images; add the shares up.
        parts = gather_objects(self.dist, (meter, background_error))
        meter, background_error = parts[0]
        for other, error in parts[1:]:
            meter.merge(other)
            background_error += error
        results = meter.results()
        metrics = {k: float(v) for k, v in results.items() if k != "n_images" and np.ndim(v) == 0}
        # What a model that predicts "all background" would score: the yardstick for "it learned".
        metrics["mae_all_background"] = background_error / results["n_images"]
        self.logger.log_scalars(self.step, {f"{tag}/{key}": value for key, value in metrics.items()})
        if shown is not None and tag == "val":
            preprocessing = self.data.preprocessing
            self.logger.log_predictions(self.step, *shown, preprocessing.mean, preprocessing.std)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, weights: Mapping[str, torch.Tensor] | None = None, metrics: Mapping | None = None) -> dict:
        """Everything needed to resume, plus what evaluate/export need to rebuild the model: a
        :class:`~u2net.models.Checkpoint`'s stored dict.

        ``weights`` and ``metrics`` replace the trained model's state dict and scores (best.pt holding
        the EMA's or the start's weights); the training state stays this run's."""
        model = self.module
        return Checkpoint(
            model=dict(weights) if weights is not None else model.state_dict(),
            weights_source="model" if weights is None else self.selection.best_source,  # what "model" holds
            model_name=getattr(model, "model_name", None),
            model_args=getattr(model, "model_args", {}),
            preprocessing=self.data.preprocessing,
            config=self.run_config,
            trainer=asdict(self.cfg),
            step=self.step,
            epoch=self.step * self.cfg.grad_accum // max(1, self.data.steps_per_epoch(self.dist.world_size)),
            **self.selection.checkpoint_fields(metrics),  # metrics, best*, initial_metrics, ema, history
            train_seconds=self.train_seconds,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng_state(),
        ).to_dict()

    def save(self, name: str, weights: Mapping | None = None, metrics: Mapping | None = None) -> Path:
        """Write the current state (with ``weights`` and their ``metrics``, see :meth:`state_dict`) to
        ``out_dir/checkpoints/name`` atomically (rank 0 only)."""
        path = self.ckpt_dir / name
        if self.dist.is_main:
            save_checkpoint(self.state_dict(weights, metrics), path)
        return path

    def restore(self, path: str | Path) -> None:
        """Resume from a checkpoint written by :meth:`save` (checked whole before anything of it is applied)."""
        self._apply_resume_state(self._read_resume_state(path))

    def _read_resume_state(self, path: str | Path) -> Checkpoint:
        """The checkpoint at ``path`` when this run can resume from it, its EMA state too (see
        :func:`~u2net.engine.resume.read_resume_state`); a ``ValueError`` naming the file's first problem otherwise."""
        state = read_resume_state(path, self.module, self.optimizer)
        self.selection.check(state, path)
        return state

    def _apply_resume_state(self, state: Checkpoint) -> None:
        """Load what :meth:`_read_resume_state` checked into the model, optimizer, scaler, EMA and RNGs."""
        from ..models.state_dict import load_state_dict

        load_state_dict(self.module, state.model, source=str(state.source))
        load_optimizer_state(self.optimizer, state, self.group_settings)
        if state.scaler:  # empty when the checkpoint was not trained in fp16
            self.scaler.load_state_dict(state.scaler)
        self.step, self.train_seconds = state.step, state.train_seconds
        self.selection.load(state, self.module)  # a run that had no EMA starts the average here
        if state.rng is not None:
            set_rng_state(state.rng)

    def _apply_schedule(self) -> None:
        """Set every group's rate for the coming step: its base rate times the schedule's factor."""
        if self.schedule is None:
            return
        budget = self.cfg.max_minutes * 60
        time_fraction = self.train_seconds / budget if budget > 0 else 0.0
        factor = self.schedule.factor(self.step, self.cfg.max_steps, time_fraction)
        for group, settings in zip(self.optimizer.param_groups, self.group_settings):
            group["lr"] = settings["lr"] * factor

    def _next_minute_mark(self) -> float | None:
        every = self.cfg.val_every_minutes
        return (math.floor(self.train_seconds / 60 / every + 1e-9) + 1) * every if every > 0 else None

    def _validate_start(self) -> None:
        """Score the starting weights: the reference, and the first candidate for best.pt."""
        metrics = self.validate()
        if self.selection.start(metrics, self.step, self.train_seconds / 60):
            self.save("best.pt")

    def _validate_and_save(self, progress) -> None:
        """Validate the trained weights (and their EMA), save last.pt, and best.pt when either is
        better than every candidate so far; print a line comparing with the start."""
        selection = self.selection
        selection.metrics = self.validate()
        if selection.ema is not None:
            broadcast_tensors(self.dist, list(selection.ema.module.buffers()))  # per-rank BatchNorm statistics
            selection.ema_metrics = self.validate(selection.ema.module, tag="val_ema")
        improved = selection.choose(self.step, self.train_seconds / 60)
        self.save("last.pt")
        if improved is not None:
            winner = selection.ema.module if improved == "ema" else self.module
            self.save("best.pt", winner.state_dict(), selection.best_metrics)
        if self.dist.is_main and selection.metrics:
            progress.write(selection.validation_line(self.step))

    def _restore_folded_batchnorm(self) -> None:
        """Undo folded BatchNorm (see :mod:`u2net.models.batchnorm`) from the first training images."""
        if not folded_batchnorms(self.module):
            return
        # Every rank measures the same images (rank 0's view of step 0) and then takes rank 0's
        # result, so that the ranks start from identical weights whatever the device's rounding.
        loader = self.data.train_loader(self.cfg.seed, 0, rank=0, world_size=1)
        batches = itertools.islice(iter(loader), math.ceil(self.cfg.restore_bn_images / self.data.batch_size))
        images = [batch["image"] for batch in batches]
        count = restore_batchnorm(self.module, (batch.to(self.device) for batch in images))
        broadcast_tensors(self.dist, list(self.module.state_dict().values()))
        self.selection.restart_ema(self.module)  # the average starts at the restored weights
        if self.dist.is_main and self.cfg.progress:
            print(f"restored {count} folded BatchNorm layers from {sum(len(b) for b in images)} training images")

    def _check_low_precision(self) -> None:
        """precision=auto: keep bf16 only if one batch's bf16 gradient agrees with the fp32 one (see
        :mod:`u2net.engine.precision`); the published U²-Net† weights do not, and train in fp32."""
        loader = self.data.train_loader(self.cfg.seed, 0, rank=0, world_size=1)  # the same batch on every rank
        images, masks = self._to_device(next(iter(loader)))
        self._train_mode()
        agreement = gradient_agreement(self.module, self.loss_fn, images, masks, self.precision)
        if not any_rank(self.dist, agreement < MIN_GRADIENT_AGREEMENT):
            return
        if self.dist.is_main:
            print(
                f"precision: {self.precision} gradients disagree with fp32 on the first batch (cosine "
                f"{agreement:.2f} < {MIN_GRADIENT_AGREEMENT}): training in fp32 "
                f"(trainer.precision={self.precision} forces {self.precision})"
            )
        self.precision = "fp32"
        if self.cfg.val_precision == "same":
            self.val_precision = "fp32"

    # ------------------------------------------------------------------ helpers
    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.freeze_bn:
            for module in self.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _save_after_crash(self, exc: Exception, progress) -> None:
        """Save last.pt when a step failed before it changed the weights (a data error, say), so that
        the steps since the last validation are not lost; a crash inside the update, or a non-finite
        loss (the last checkpoint is the good one), saves nothing."""
        if self._updating or isinstance(exc, NonFiniteLossError) or self.step == 0:
            return
        try:
            path = self.save("last.pt")
        except Exception as save_error:  # the disk may be what failed: keep the original error
            warnings.warn(f"could not save last.pt after the error: {save_error}", stacklevel=2)
            return
        if self.dist.is_main:
            progress.write(f"training failed at step {self.step + 1}: saved {path} (step {self.step}) first")

    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002
        # Finish the current step so the saved state is consistent; a second Ctrl-C aborts at once.
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _profiler(self):
        if self.cfg.profile_steps <= 0 or not self.dist.is_main:
            return None
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        profiler = profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=self.cfg.profile_steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.out_dir / "tensorboard" / "profiler")),
            record_shapes=True,
        )
        profiler.start()
        return profiler

    def _next_batches(self, batches) -> list[dict] | None:
        try:
            return [next(batches) for _ in range(self.cfg.grad_accum)]
        except (RuntimeError, KeyboardInterrupt):
            # Ctrl-C reaches the loader workers too; they exit and the loader raises.
            if self.stop_requested:
                return None
            raise

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = batch["image"].to(self.device, non_blocking=non_blocking)
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch["mask"].to(self.device, non_blocking=non_blocking)

    def _log_train(self, losses: list[float], speed: float) -> None:
        scalars = {"train/loss": losses[0]}
        scalars |= {f"train/loss_{'fused' if i == 0 else f'side{i}'}": v for i, v in enumerate(losses[1:])}
        scalars["train/lr"] = self.optimizer.param_groups[-1]["lr"]  # the decoder's
        scalars["train/images_per_s"] = speed
        self.logger.log_scalars(self.step, scalars)


def _warn_on_size_mismatch(model: nn.Module, data: SaliencyDataModule) -> None:
    expected, size = getattr(model, "weights_input_size", None), data.preprocessing.image_size
    if expected and expected != size:
        warnings.warn(
            f"the starting weights were made for {expected}×{expected} inputs but this run resizes to {size}×{size} "
            f"(data.image_size); unless that is meant, set data.image_size={expected} (and data.crop_size), as "
            "experiment=finetune and data=folder do",
            stacklevel=3,
        )


def _progress_bar(initial: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(initial=initial, total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
