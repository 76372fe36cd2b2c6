"""Learning-rate schedules: a factor of the base rate as a pure function of the run's position."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "poly")


@dataclass(frozen=True)
class LRSchedule:
    """Factor applied to the base learning rate of every parameter group.

    Linear warm-up from ``warmup_start`` to 1 over ``warmup_steps``, then ``constant`` (1),
    ``cosine`` (half cosine down to ``min_ratio``) or ``poly`` (``(1 - t) ** power`` down to
    ``min_ratio``) as the run goes from the end of the warm-up to its end. The trainer asks for the
    factor before each optimizer step; nothing is stored, so a resumed run (or one with another
    ``max_steps``) follows the schedule of its own settings.
    """

    name: str = "constant"
    warmup_steps: int = 0
    warmup_start: float = 0.0
    min_ratio: float = 0.0
    power: float = 0.9  # poly only

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")

    def factor(self, step: int, total_steps: int, time_fraction: float = 0.0) -> float:
        """The factor for optimizer step ``step`` (0 = the first) of ``total_steps``.

        ``time_fraction`` is the part of a time budget already spent (``trainer.max_minutes``): the
        decay follows whichever of steps and time is further along, so that a run stopped by its
        budget still ends with the low rates of its schedule.
        """
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        if self.name == "constant":
            return 1.0
        by_steps = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
        t = min(1.0, max(by_steps, time_fraction))
        decay = 0.5 * (1.0 + math.cos(math.pi * t)) if self.name == "cosine" else (1.0 - t) ** self.power
        return self.min_ratio + (1.0 - self.min_ratio) * decay
