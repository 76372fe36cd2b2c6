"""Exponential moving average of a model's weights (validated beside the trained weights)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """A copy of ``model`` whose floating-point parameters and buffers follow the trained ones as
    ``ema ← ema + (1 − decay) · (live − ema)`` after every optimizer step; integer buffers are copied.

    There is no warm-up of the decay: the average starts at the starting weights and keeps a share
    ``decay ** n`` of them after ``n`` steps. When fine-tuning that is what is wanted (measured on real
    data, docs/finetuning.md: the average of a start-anchored path scores better than the path itself).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (same architecture as at construction)."""
        weight = 1.0 - self.decay
        self.updates += 1
        averaged, live = self.module.state_dict(), model.state_dict()
        floats = [key for key, value in averaged.items() if value.dtype.is_floating_point]
        torch._foreach_lerp_([averaged[k] for k in floats], [live[k].detach() for k in floats], weight)
        for key, value in averaged.items():
            if not value.dtype.is_floating_point:
                value.copy_(live[key])

    def state_dict(self) -> dict:
        """The averaged weights and the update count (what resuming needs)."""
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
