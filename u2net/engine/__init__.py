"""Training: the loop, checkpoints, schedules and device/precision helpers."""

from ..device import autocast_context, pick_device
from .checkpoint import save_checkpoint
from .ema import WeightEMA
from .params import param_groups
from .schedulers import LRSchedule
from .trainer import NonFiniteLossError, Trainer, TrainerConfig
from .utils import seed_everything

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
