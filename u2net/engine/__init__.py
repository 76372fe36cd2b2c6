"""Training: the loop, checkpoints, schedules and device/precision helpers."""

from .checkpoint import save_checkpoint
from .ema import WeightEMA
from .params import param_groups
from .schedulers import LRSchedule
from .trainer import NonFiniteLossError, Trainer, TrainerConfig
from .utils import autocast_context, pick_device, seed_everything

__all__ = [
    "LRSchedule",
    "NonFiniteLossError",
    "Trainer",
    "TrainerConfig",
    "WeightEMA",
    "autocast_context",
    "param_groups",
    "pick_device",
    "save_checkpoint",
    "seed_everything",
]
