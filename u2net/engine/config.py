"""How to train: :class:`TrainerConfig`, the options of :class:`~u2net.engine.Trainer` (configs/trainer/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics.saliency import PER_IMAGE_KEYS


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
    image_log_count: int = 4  # validation images shown in TensorBoard (the logger's setting, see tensorboard)
    progress: bool = True
    # The logger's settings, recorded in checkpoints: train.py sets them from logger= (configs/logger), whose
    # object the trainer calls; a Trainer given no logger builds one from them.
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
