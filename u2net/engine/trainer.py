"""The training loop: read it top to bottom in :meth:`Trainer.fit`."""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..data import DatasetCheckError
from ..data.datamodule import SaliencyDataModule
from ..metrics import SaliencyMetrics, evaluate_batch
from ..metrics.saliency import PER_IMAGE_KEYS
from .checkpoint import rng_state, save_checkpoint, set_rng_state
from .distributed import any_rank, barrier, broadcast_object, gather_objects, setup_distributed
from .utils import autocast_context, pick_device, resolve_precision, seed_everything


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without touching the saved checkpoints."""


@dataclass
class TrainerConfig:
    """How to train: length, precision, validation and logging cadence, where to write."""

    out_dir: str = "runs/default"
    max_steps: int = 1000
    val_every: int = 500
    log_every: int = 10
    checkpoint_every: int = 0  # extra last.pt saves between validations; 0 = only at validation
    grad_accum: int = 1
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (CUDA only, with gradient scaling)
    device: str = "auto"  # auto = cuda, then mps, then cpu
    channels_last: bool = False
    seed: int = 42
    monitor: str = "mae"  # validation metric that picks best.pt
    monitor_mode: str = "auto"  # min | max | auto (min for MAE, max for the scores)
    image_log_count: int = 4  # validation images shown in TensorBoard
    progress: bool = True
    tensorboard: bool = True
    num_threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    validate_at_start: bool = True  # score the untrained (or fine-tuning start) model as a reference
    freeze_bn: bool = False  # BatchNorm in eval mode while training (small batches, fine-tuning)
    sync_batchnorm: bool = False  # SyncBatchNorm across ranks (CUDA only)
    compile: bool = False  # torch.compile the model
    profile_steps: int = 0  # record a torch.profiler trace of this many steps (after 2 warm-up) for TensorBoard
    overwrite: bool = False  # start afresh in a run folder that holds checkpoints (else refuse; resume instead)

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("val_every", "checkpoint_every", "image_log_count", "profile_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be 0 (off) or more, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"trainer.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        known = (*PER_IMAGE_KEYS, "mae_all_background")  # what validate() returns
        if self.monitor not in known:
            raise ValueError(f"trainer.monitor={self.monitor!r} is not a validation metric; one of {', '.join(known)}")
        if self.monitor_mode == "auto":
            self.monitor_mode = "min" if self.monitor.startswith("mae") else "max"
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"trainer.monitor_mode must be min, max or auto, got {self.monitor_mode!r}")


class Trainer:
    """Trains ``model`` with deep supervision on the batches of ``data``.

    ``loss_fn(outputs, target) -> (total, per_output)``; ``optimizer`` and ``scheduler`` are
    ready-built (the scheduler is stepped once per optimizer step). ``run_config`` is the resolved
    configuration, stored in every checkpoint so it describes itself.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        optimizer: Optimizer,
        scheduler: LRScheduler | None,
        data: SaliencyDataModule,
        config: TrainerConfig,
        run_config: Mapping | None = None,
    ) -> None:
        self.cfg = config
        self.device = pick_device(config.device)
        self.dist = setup_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
        self.precision = resolve_precision(config.precision, self.device)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.module = model.to(self.device)  # the bare model: what checkpoints hold
        if config.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if config.sync_batchnorm and self.dist.enabled:
            if self.device.type != "cuda":
                raise ValueError("trainer.sync_batchnorm needs CUDA; on the CPU use trainer.freeze_bn=true instead")
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        self.model = self.module
        if self.dist.enabled:
            device_ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        if config.compile:
            self.model = torch.compile(self.model)
        self.loss_fn, self.optimizer, self.scheduler, self.data = loss_fn, optimizer, scheduler, data
        self.run_config = dict(run_config or {})
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.initial_metrics: dict[str, float] = {}
        self.best: float | None = None
        self.stop_requested = False
        self.writer = None

    # ------------------------------------------------------------------ the loop
    def fit(self, ckpt_path: str | None = None) -> dict[str, float]:
        """Train up to ``max_steps`` optimizer steps (resuming from ``ckpt_path`` if given) and
        return the last validation metrics. Ctrl-C saves ``last.pt`` and returns early."""
        cfg, ctx = self.cfg, self.dist
        # Decided by rank 0 (the only writer) and raised on every rank, so that none is left waiting.
        refusal = None
        if ctx.is_main and not ckpt_path and not cfg.overwrite:
            earlier = sorted(p.name for p in self.ckpt_dir.glob("*.pt"))
            if earlier:
                refusal = (
                    f"{self.ckpt_dir} holds checkpoints of an earlier run ({', '.join(earlier)}): resume with "
                    f"ckpt_path={self.ckpt_dir / 'last.pt'}, pick another run folder, or set trainer.overwrite=true"
                )
        refusal = broadcast_object(ctx, refusal)
        if refusal is not None:
            raise FileExistsError(refusal)
        seed_everything(cfg.seed + ctx.rank)  # per-rank seeds; DDP broadcasts rank 0's initial weights
        self._setup_data()
        if ckpt_path:
            self.restore(ckpt_path)  # every rank reads the same checkpoint
        if cfg.tensorboard and ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        start = self.step * cfg.grad_accum
        batches = iter(self.data.train_loader(cfg.seed, start, ctx.rank, ctx.world_size))
        if cfg.validate_at_start and self.step == 0:
            self.initial_metrics = self.validate()
        images_per_step = self.data.batch_size * cfg.grad_accum * ctx.world_size
        progress = _progress_bar(self.step, cfg.max_steps, cfg.progress and ctx.is_main)
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        profiler = self._profiler()
        try:
            while self.step < cfg.max_steps:
                started = time.perf_counter()
                batch_group = self._next_batches(batches)
                if batch_group is None:  # interrupted while waiting for data
                    break
                losses = self.train_step(batch_group)
                self.step += 1
                if profiler is not None:
                    profiler.step()
                speed = images_per_step / (time.perf_counter() - started)
                progress.update(1)
                progress.set_postfix(loss=f"{losses[0]:.4f}", img_s=f"{speed:.2f}")
                if self.step % cfg.log_every == 0 or self.step == 1:
                    self._log_train(losses, speed)
                at_end = self.step == cfg.max_steps
                if (cfg.val_every and self.step % cfg.val_every == 0) or at_end:
                    self.metrics = self.validate()
                    self._save_checkpoints()
                elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save("last.pt")
                # All ranks stop together, whichever of them was signalled.
                if any_rank(ctx, self.stop_requested):
                    self.stop_requested = True
                    break
            if self.stop_requested:
                path = self.save("last.pt")
                if ctx.is_main:
                    progress.write(f"Interrupted: saved {path} at step {self.step}. Resume with ckpt_path={path}")
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if profiler is not None:
                profiler.stop()
            progress.close()
            if self.writer is not None:
                self.writer.close()
        barrier(ctx)
        return self.metrics

    def _setup_data(self) -> None:
        # Rank 0 makes the synthetic set (if configured), scans and checks every file, and hands its
        # pairs to the other ranks, so that all of them train on the same list (with on_invalid=skip
        # too). Then the first rank of each other node finds the synthetic set on shared storage or
        # makes that node its own copy (no two processes ever generate into one folder) and checks
        # that the node sees every file. A failure anywhere is raised on every rank: none waits forever.
        ctx = self.dist
        failure, pairs = None, None
        if ctx.is_main:
            try:
                self.data.setup(seed=self.cfg.seed)
                pairs = self.data.pairs()
            except Exception as exc:
                failure = exc
        pairs, message = broadcast_object(ctx, (pairs, None if failure is None else str(failure)))
        if failure is not None:
            raise failure
        if message is not None:
            raise DatasetCheckError(f"rank 0 could not prepare the data: {message}")
        problem = None
        if not ctx.is_main and ctx.local_rank == 0:
            try:
                self.data.prepare()
                missing = [str(path) for pair in itertools.chain(*pairs) for path in pair if not Path(path).is_file()]
                if missing:
                    problem = (
                        f"rank {ctx.rank}: {len(missing)} file(s) that rank 0 uses are missing there, e.g. "
                        f"{missing[0]}; every node needs the datasets at the same path, on shared storage or copied"
                    )
            except Exception as exc:
                problem = f"rank {ctx.rank}: {exc}"
        problems = [p for p in gather_objects(ctx, problem) if p is not None]
        if problems:
            raise DatasetCheckError(problems[0])
        if not ctx.is_main:
            self.data.setup_from_pairs(*pairs)

    def train_step(self, batch_group: list[dict]) -> list[float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns [total, fused, side1..]."""
        cfg = self.cfg
        self.model.train()
        if cfg.freeze_bn:
            for module in self.module.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        totals = None
        for i, batch in enumerate(batch_group):
            images, masks = self._to_device(batch)
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            last = i == len(batch_group) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.model.no_sync()
            with sync:
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
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return losses

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """MAE and F-measure of the fused output on the validation set (empty dict without one)."""
        loader = self.data.val_loader(self.dist.rank, self.dist.world_size)
        if loader is None:
            return {}
        self.model.eval()
        meter = SaliencyMetrics()
        shown = None
        background_error = 0.0
        for batch in loader:
            images, masks = self._to_device(batch)
            with autocast_context(self.device, self.precision):
                fused = self.model(images)[0]
            probs = torch.sigmoid(fused.float())
            evaluate_batch(meter, probs.cpu(), masks.cpu())
            background_error += (masks > 128 / 255).flatten(1).float().mean(1).sum().item()
            if shown is None and self.cfg.image_log_count > 0:
                shown = (images[: self.cfg.image_log_count], masks, probs)
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
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"val/{key}", value, self.step)
            if shown is not None:
                self._log_images(*shown)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to resume, plus what evaluate/export need to rebuild the model."""
        model = self.module
        return {
            "model": model.state_dict(),
            "model_name": getattr(model, "model_name", None),
            "model_args": getattr(model, "model_args", {}),
            "preprocessing": dict(self.data.preprocessing),
            "config": self.run_config,
            "trainer": asdict(self.cfg),
            "step": self.step,
            "epoch": self.step * self.cfg.grad_accum // max(1, self.data.steps_per_epoch(self.dist.world_size)),
            "metrics": dict(self.metrics),
            "best": self.best,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def save(self, name: str) -> Path:
        """Write the current state to ``out_dir/checkpoints/name`` atomically (rank 0 only)."""
        path = self.ckpt_dir / name
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), path)
        return path

    def restore(self, path: str | Path) -> None:
        """Resume from a checkpoint written by :meth:`save`."""
        from ..models.weights import load_state_dict

        state = torch.load(path, map_location="cpu", weights_only=True)
        if "optimizer" not in state:
            raise ValueError(f"{path}: holds no training state; to fine-tune from weights use model.weights={path}")
        load_state_dict(self.module, state["model"], source=str(path))
        # This run's learning rates (its optim.lr) win over the checkpoint's, so that resuming with
        # another rate (after a NaN, say) takes effect; with the same config nothing changes.
        configured = [group.get("initial_lr", group["lr"]) for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            # LambdaLR.load_state_dict also overwrites the schedule's own settings (total steps,
            # warm-up); keep this run's, so that resuming with a larger max_steps stretches the schedule.
            factors = [dict(getattr(f, "__dict__", {})) for f in getattr(self.scheduler, "lr_lambdas", [])]
            self.scheduler.load_state_dict(state["scheduler"])
            for f, saved in zip(getattr(self.scheduler, "lr_lambdas", []), factors):
                f.__dict__.update(saved)
        self._set_base_lrs(configured)
        if state.get("scaler"):  # empty when the checkpoint was not trained in fp16
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.metrics, self.best = state["step"], state.get("metrics", {}), state.get("best")
        set_rng_state(state["rng"])

    def _set_base_lrs(self, base_lrs: list[float]) -> None:
        for group, base in zip(self.optimizer.param_groups, base_lrs):
            if "initial_lr" in group:
                group["initial_lr"] = base
        if self.scheduler is None:
            for group, base in zip(self.optimizer.param_groups, base_lrs):
                group["lr"] = base
            return
        self.scheduler.base_lrs = list(base_lrs)
        factors = getattr(self.scheduler, "lr_lambdas", None)
        if factors is not None:  # LambdaLR (all of ours): the rate this step, as LambdaLR computes it
            for group, base, factor in zip(self.optimizer.param_groups, base_lrs, factors):
                group["lr"] = base * factor(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _save_checkpoints(self) -> None:
        value = self.metrics.get(self.cfg.monitor)
        improved = value is not None and (
            self.best is None or (value < self.best if self.cfg.monitor_mode == "min" else value > self.best)
        )
        if improved:
            self.best = value
        self.save("last.pt")
        if improved:
            self.save("best.pt")

    # ------------------------------------------------------------------ helpers
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
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", losses[0], self.step)
        for i, value in enumerate(losses[1:]):
            self.writer.add_scalar(f"train/loss_{'fused' if i == 0 else f'side{i}'}", value, self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
        self.writer.add_scalar("train/images_per_s", speed, self.step)

    def _log_images(self, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor) -> None:
        n = images.shape[0]
        mean = torch.tensor(self.data.preprocessing["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data.preprocessing["std"], device=images.device).view(1, 3, 1, 1)
        shown = (images.float() * std + mean).clamp(0, 1)
        # One row each for inputs, ground truth and predictions; one column per image.
        rows = [shown, masks[:n].float().expand(-1, 3, -1, -1), probs[:n].expand(-1, 3, -1, -1)]
        grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
        self.writer.add_image("val/input_gt_prediction", grid.cpu(), self.step)


def _progress_bar(initial: int, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(initial=initial, total=total, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
