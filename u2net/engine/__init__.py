"""Training: the loop, checkpoints, schedules and device/precision helpers."""

from .checkpoint import save_checkpoint
from .ema import WeightEMA
from .params import param_groups
from .schedulers import LRFactor, build_scheduler
from .trainer import NonFiniteLossError, Trainer, TrainerConfig
from .utils import autocast_context, pick_device, seed_everything

__all__ = [
    "LRFactor",
    "NonFiniteLossError",
    "Trainer",
    "TrainerConfig",
    "WeightEMA",
    "autocast_context",
    "build_scheduler",
    "param_groups",
    "pick_device",
    "save_checkpoint",
    "seed_everything",
]
