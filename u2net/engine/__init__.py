"""Training: the loop, checkpoints, schedules and device/precision helpers."""

from .checkpoint import save_checkpoint
from .schedulers import LRFactor, build_scheduler
from .trainer import NonFiniteLossError, Trainer, TrainerConfig
from .utils import autocast_context, pick_device, seed_everything

__all__ = [
    "LRFactor",
    "NonFiniteLossError",
    "Trainer",
    "TrainerConfig",
    "autocast_context",
    "build_scheduler",
    "pick_device",
    "save_checkpoint",
    "seed_everything",
]
