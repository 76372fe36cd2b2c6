"""The training loop: read it top to bottom in :meth:`Trainer.fit`."""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from ..data import DatasetCheckError
from ..data.datamodule import SaliencyDataModule
from ..metrics import SaliencyMetrics, evaluate_batch
from ..metrics.saliency import PER_IMAGE_KEYS
from ..models.batchnorm import folded_batchnorms, restore_batchnorm
from ..models.checkpoint import Checkpoint, load_checkpoint
from .checkpoint import check_rng_state, rng_state, save_checkpoint, set_rng_state
from .distributed import any_rank, barrier, broadcast_object, broadcast_tensors, gather_objects, setup_distributed
from .ema import WeightEMA
from .precision import MIN_GRADIENT_AGREEMENT, gradient_agreement
from .schedulers import LRSchedule
from .utils import autocast_context, pick_device, resolve_precision, seed_everything


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without touching the saved checkpoints."""


@dataclass
class TrainerConfig:
    """How to train: length, precision, validation and logging cadence, where to write."""

    out_dir: str = "runs/default"
    max_steps: int = 400  # the quick start: `python train.py` on the synthetic set, ~5 min on a CPU
    val_every: int = 80  # validate (and save) every this many steps; 0 = only at the end
    log_every: int = 10
    checkpoint_every: int = 0  # extra last.pt saves between validations; 0 = only at validation
    grad_accum: int = 1
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto (bf16 if fast here and its gradients agree with fp32) | fp32 | bf16 | fp16 (CUDA)
    device: str = "auto"  # auto = cuda, then mps, then cpu
    channels_last: bool = True  # faster convolutions on CPU and on tensor-core GPUs
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
    max_minutes: float = 0.0  # budget of training minutes (validation not counted): stop, validate, save; 0 = none
    val_every_minutes: float = 0.0  # also validate after each this many training minutes; 0 = by steps only
    ema_decay: float = 0.0  # exponential moving average of the weights, validated beside them; 0 = off
    restore_bn: bool = True  # folded BatchNorm (rembg ONNX files): restore it from training images first
    restore_bn_images: int = 64  # calibration images for restore_bn
    val_precision: str = "fp32"  # validation precision: fp32 (bf16 scores this model measurably worse) | same

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_every", "grad_accum", "restore_bn_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "val_every",
            "checkpoint_every",
            "image_log_count",
            "profile_steps",
            "max_minutes",
            "val_every_minutes",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"trainer.{name} must be 0 (off) or more, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"trainer.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"trainer.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.val_precision not in ("fp32", "same"):
            raise ValueError(f"trainer.val_precision must be fp32 or same, got {self.val_precision!r}")
        known = (*PER_IMAGE_KEYS, "mae_all_background")  # what validate() returns
        if self.monitor not in known:
            raise ValueError(f"trainer.monitor={self.monitor!r} is not a validation metric; one of {', '.join(known)}")
        if self.monitor_mode == "auto":
            self.monitor_mode = "min" if self.monitor.startswith("mae") else "max"
        if self.monitor_mode not in ("min", "max"):
            raise ValueError(f"trainer.monitor_mode must be min, max or auto, got {self.monitor_mode!r}")


class Trainer:
    """Trains ``model`` with deep supervision on the batches of ``data``.

    ``loss_fn(outputs, target) -> (total, per_output)``; ``optimizer`` is ready-built, its groups'
    rates the base rates that ``schedule`` scales before every step (``None``: constant).
    ``run_config`` is the resolved configuration, stored in every checkpoint so it describes itself.
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
    ) -> None:
        self.cfg = config
        _warn_on_size_mismatch(model, data)
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
        self.loss_fn, self.optimizer, self.schedule, self.data = loss_fn, optimizer, schedule, data
        # This run's optimizer settings per group (rates before the schedule, weight decay, betas, ...):
        # they win over a resumed checkpoint's, so that resuming with other settings takes effect.
        self.group_settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.run_config = dict(run_config or {})
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.out_dir = Path(config.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.step = 0
        self.metrics: dict[str, float] = {}
        self.initial_metrics: dict[str, float] = {}
        self.best: float | None = None
        self.best_metrics: dict[str, float] = {}  # of the weights in best.pt (the start's at first)
        self.best_source = ""  # "start", "model" or "ema": which weights best.pt holds
        self.ema = WeightEMA(self.module, config.ema_decay) if config.ema_decay > 0 else None
        self.ema_metrics: dict[str, float] = {}
        self.val_precision = "fp32" if config.val_precision == "fp32" else self.precision
        self.train_seconds = 0.0  # time spent in training steps (and waiting for their data), resumed too
        self.history: list[dict[str, float]] = []  # one row per validation: step, minutes, metrics (ema_*)
        self.stop_requested = False
        self._updating = False
        self.writer = None

    # ------------------------------------------------------------------ the loop
    def fit(self, ckpt_path: str | None = None) -> dict[str, float]:
        """Train up to ``max_steps`` optimizer steps (resuming from ``ckpt_path`` if given) and
        return the last validation metrics. Ctrl-C saves ``last.pt`` and returns early."""
        cfg, ctx = self.cfg, self.dist
        self._refuse_overwriting(ckpt_path)
        # Read and checked before the data check, which can take minutes: a damaged file fails at once.
        resume = self._read_resume_state(ckpt_path) if ckpt_path else None  # every rank reads the same file
        seed_everything(cfg.seed + ctx.rank)  # per-rank seeds; DDP broadcasts rank 0's initial weights
        self._setup_data()
        if resume is not None:
            self._apply_resume_state(resume)
        elif cfg.restore_bn:
            self._restore_folded_batchnorm()
        if cfg.precision == "auto" and self.precision != "fp32":
            self._check_low_precision()
        if cfg.tensorboard and ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        start = self.step * cfg.grad_accum
        batches = iter(self.data.train_loader(cfg.seed, start, ctx.rank, ctx.world_size))
        if cfg.validate_at_start and self.step == 0:
            self._validate_start()
        images_per_step = self.data.batch_size * cfg.grad_accum * ctx.world_size
        progress = _progress_bar(self.step, cfg.max_steps, cfg.progress and ctx.is_main)
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        profiler = self._profiler()
        next_val_minutes = self._next_minute_mark()
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
            if self.writer is not None:
                self.writer.close()
        barrier(ctx)
        return self.metrics

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
                missing = [
                    str(path) for pair in itertools.chain(*pairs[:2]) for path in pair if not Path(path).is_file()
                ]
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
        self._train_mode()
        self._apply_schedule()
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
        self._updating = True  # from here until the EMA is updated, the weights are half-changed
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.module)
        self._updating = False
        return losses

    @torch.no_grad()
    def validate(self, model: nn.Module | None = None, tag: str = "val") -> dict[str, float]:
        """MAE and F-measure of the fused output of ``model`` (default: the trained one) on the
        validation set (empty dict without one); logged to TensorBoard under ``tag``."""
        loader = self.data.val_loader(self.dist.rank, self.dist.world_size)
        if loader is None:
            return {}
        model = self.model if model is None else model
        model.eval()
        meter = SaliencyMetrics()
        shown = None
        background_error = 0.0
        for batch in loader:
            images, masks = self._to_device(batch)
            with autocast_context(self.device, self.val_precision):
                fused = model(images)[0]
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
                self.writer.add_scalar(f"{tag}/{key}", value, self.step)
            if shown is not None and tag == "val":
                self._log_images(*shown)
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
            weights_source="model" if weights is None else self.best_source,  # what "model" holds
            model_name=getattr(model, "model_name", None),
            model_args=getattr(model, "model_args", {}),
            preprocessing=self.data.preprocessing,
            config=self.run_config,
            trainer=asdict(self.cfg),
            step=self.step,
            epoch=self.step * self.cfg.grad_accum // max(1, self.data.steps_per_epoch(self.dist.world_size)),
            metrics=dict(self.metrics if metrics is None else metrics),
            best=self.best,
            best_metrics=dict(self.best_metrics),
            best_source=self.best_source,
            initial_metrics=dict(self.initial_metrics),
            ema=self.ema.state_dict() if self.ema is not None else None,
            train_seconds=self.train_seconds,
            history=[dict(row) for row in self.history],
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
        """The checkpoint at ``path`` when this run can resume from it; a ``ValueError`` naming the file and its
        first problem otherwise (the weights, the training counters, the optimizer's moments, RNG and EMA
        states), so that a damaged file never starts a run (nor saves a ``last.pt`` with step -5)."""
        from ..models.state_dict import check_state_dict

        state = load_checkpoint(path)
        if not state.has_training_state:
            raise ValueError(f"{path}: holds no training state; to fine-tune from weights use model.weights={path}")
        if state.weights_source != "model":  # best.pt holding the EMA's or the start's weights
            raise ValueError(
                f"{path}: holds the {state.weights_source} weights, not the run's own; resume from last.pt "
                f"beside it, or fine-tune from these with model.weights={path}"
            )
        state.check_training_state()
        check_state_dict(self.module, state.model, source=str(path))
        self._check_optimizer_state(state.optimizer, path)
        if state.rng is not None:
            try:
                check_rng_state(state.rng)
            except ValueError as exc:
                raise ValueError(f"{path}: cannot resume from it: {exc}") from None
        if self.ema is not None and state.ema:
            check_state_dict(self.ema.module, state.ema["model"], source=f"{path} (its EMA weights)")
        return state

    def _check_optimizer_state(self, saved: Mapping, path: str | Path) -> None:
        """Refuse an optimizer state of another grouping of the parameters, or whose moments have other shapes
        than the parameters they belong to (``load_state_dict`` takes them, and the first step crashes)."""
        groups, own = saved["param_groups"], self.optimizer.param_groups
        sizes = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in groups]
        if sizes != [len(g["params"]) for g in own]:  # params.encoder_lr_scale 0 vs not: another grouping
            raise ValueError(
                f"{path}: its optimizer state does not fit this run's parameter groups (groups of {sizes} "
                f"parameters, this run's {[len(g['params']) for g in own]}); resume with the "
                "params.encoder_lr_scale the run was started with (0 freezes the encoder: another grouping)"
            )
        params = {index: p for g, mine in zip(groups, own) for index, p in zip(g["params"], mine["params"])}
        for index, entry in saved["state"].items():
            param = params.get(index)
            if param is None or not isinstance(entry, Mapping):
                raise ValueError(f"{path}: its optimizer state has an entry {index!r} for no parameter of the run")
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"{path}: its optimizer state does not fit the model: {key} of parameter {index} has shape "
                        f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                    )

    def _apply_resume_state(self, state: Checkpoint) -> None:
        """Load what :meth:`_read_resume_state` checked into the model, optimizer, scaler, EMA and RNGs."""
        from ..models.state_dict import load_state_dict

        path = state.source
        load_state_dict(self.module, state.model, source=str(path))
        try:
            self.optimizer.load_state_dict(state.optimizer)
        except ValueError as exc:  # another grouping of the parameters (params.encoder_lr_scale 0 vs not)
            raise ValueError(
                f"{path}: its optimizer state does not fit this run's parameter groups ({exc}); resume with the "
                "params.encoder_lr_scale the run was started with (0 freezes the encoder: another grouping)"
            ) from None
        for group, settings in zip(self.optimizer.param_groups, self.group_settings):
            group.update(settings)  # this run's rates, weight decay, betas; the moments stay the checkpoint's
        if state.scaler:  # empty when the checkpoint was not trained in fp16
            self.scaler.load_state_dict(state.scaler)
        self.step, self.metrics, self.best = state.step, state.metrics, state.best
        self.best_metrics, self.best_source = state.best_metrics, state.best_source
        self.initial_metrics = state.initial_metrics
        self.train_seconds, self.history = state.train_seconds, list(state.history)
        if self.ema is not None and state.ema:
            self.ema.load_state_dict(state.ema)
        elif self.ema is not None:  # resuming a run that had no EMA: start the average here
            self.ema = WeightEMA(self.module, self.cfg.ema_decay)
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

    def _better(self, value: float | None, than: float | None) -> bool:
        if value is None:
            return False
        return than is None or (value < than if self.cfg.monitor_mode == "min" else value > than)

    def _validate_start(self) -> None:
        # The starting weights are the first candidate for best.pt: a fine-tuning run whose every
        # step makes the model worse ends with best.pt equal to the model it started from.
        self.initial_metrics = self.validate()
        self.metrics = dict(self.initial_metrics)
        self._record()
        value = self.initial_metrics.get(self.cfg.monitor)
        if value is not None:
            self.best, self.best_metrics, self.best_source = value, dict(self.initial_metrics), "start"
            self.save("best.pt")

    def _validate_and_save(self, progress) -> None:
        """Validate the trained weights (and their EMA), save last.pt, and best.pt when either is
        better than every candidate so far; print a line comparing with the start."""
        self.metrics = self.validate()
        candidates = [("model", self.metrics, None)]
        if self.ema is not None:
            broadcast_tensors(self.dist, list(self.ema.module.buffers()))  # per-rank BatchNorm statistics
            self.ema_metrics = self.validate(self.ema.module, tag="val_ema")
            candidates.append(("ema", self.ema_metrics, self.ema.module.state_dict()))
        improved = None
        for source, metrics, weights in candidates:
            if self._better(metrics.get(self.cfg.monitor), self.best):
                self.best, self.best_metrics, self.best_source = metrics[self.cfg.monitor], dict(metrics), source
                improved = weights if weights is not None else self.module.state_dict()
        self._record()
        self.save("last.pt")
        if improved is not None:
            self.save("best.pt", improved, self.best_metrics)
        if self.dist.is_main and self.metrics:
            progress.write(self._validation_line())

    def _record(self) -> None:
        if self.metrics:
            row = {"step": self.step, "minutes": self.train_seconds / 60, **self.metrics}
            self.history.append(row | {f"ema_{k}": v for k, v in self.ema_metrics.items()})

    def _validation_line(self) -> str:
        keys = [k for k in ("mae", "max_f", "sm", "biou") if k in self.metrics]
        start = self.initial_metrics

        def show(metrics: Mapping[str, float]) -> str:
            return " ".join(f"{k} {metrics[k]:.4f}" + (f" ({start[k]:.4f})" if k in start else "") for k in keys)

        line = f"val step {self.step}{' (start in brackets)' if start else ''}: {show(self.metrics)}"
        if self.ema_metrics:
            line += f" | ema: {show(self.ema_metrics)}"
        if self.best is not None:
            line += f" | best.pt: {self.best_source} ({self.cfg.monitor} {self.best:.4f})"
        return line

    def summary(self) -> str:
        """Start vs best.pt on every validation metric, one line each (empty without validation)."""
        if not self.best_metrics:
            return ""
        rows = [f"best.pt holds the {self.best_source} weights; start -> best on the validation set:"]
        for key, value in self.best_metrics.items():
            before = self.initial_metrics.get(key)
            shown = f"{before:.4f} -> {value:.4f}" if before is not None else f"{value:.4f}"
            rows.append(f"  {key:<20} {shown}")
        return "\n".join(rows)

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
        if self.ema is not None:
            self.ema = WeightEMA(self.module, self.cfg.ema_decay)
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
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", losses[0], self.step)
        for i, value in enumerate(losses[1:]):
            self.writer.add_scalar(f"train/loss_{'fused' if i == 0 else f'side{i}'}", value, self.step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[-1]["lr"], self.step)  # the decoder's
        self.writer.add_scalar("train/images_per_s", speed, self.step)

    def _log_images(self, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor) -> None:
        n = images.shape[0]
        mean = torch.tensor(self.data.preprocessing.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data.preprocessing.std, device=images.device).view(1, 3, 1, 1)
        shown = (images.float() * std + mean).clamp(0, 1)
        # One row each for inputs, ground truth and predictions; one column per image.
        rows = [shown, masks[:n].float().expand(-1, 3, -1, -1), probs[:n].expand(-1, 3, -1, -1)]
        grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)
        self.writer.add_image("val/input_gt_prediction", grid.cpu(), self.step)


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
