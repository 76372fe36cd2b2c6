"""Learning-rate schedules as multiplicative factors of the base rate, with linear warm-up."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "cosine", "poly")


class LRFactor:
    """Factor applied to the base learning rate at optimizer step ``step``.

    Linear warm-up from ``warmup_start`` to 1 over ``warmup_steps``, then ``constant`` (1),
    ``cosine`` (half cosine down to ``min_ratio``) or ``poly`` (``(1 - t) ** power`` down to
    ``min_ratio``) over the remaining steps up to ``total_steps``.
    """

    def __init__(
        self,
        name: str = "constant",
        total_steps: int = 1,
        warmup_steps: int = 0,
        warmup_start: float = 0.0,
        min_ratio: float = 0.0,
        power: float = 0.9,
    ) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        self.name, self.total_steps, self.warmup_steps = name, max(1, total_steps), max(0, warmup_steps)
        self.warmup_start, self.min_ratio, self.power = warmup_start, min_ratio, power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.name == "constant":
            return 1.0
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        decay = 0.5 * (1.0 + math.cos(math.pi * t)) if self.name == "cosine" else (1.0 - t) ** self.power
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def build_scheduler(optimizer: Optimizer, total_steps: int, name: str = "constant", **kwargs) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step; ``kwargs`` go to :class:`LRFactor`."""
    return LambdaLR(optimizer, LRFactor(name, total_steps, **kwargs))
