"""Which weights best.pt holds: the start, the trained model or its EMA, and what every validation scored."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..models.checkpoint import Checkpoint
from .ema import WeightEMA


class ModelSelection:
    """The candidates for best.pt and their scores on ``monitor`` (``mode`` ``"min"`` or ``"max"``).

    The starting weights are the first candidate (a fine-tuning run whose every step makes the model worse ends
    with best.pt equal to its start), then the trained weights and their EMA (``ema``, when kept) at each
    validation. Its state is stored in the checkpoint's fields ``metrics``, ``best``, ``best_metrics``,
    ``best_source``, ``initial_metrics``, ``ema`` and ``history`` (:meth:`checkpoint_fields`, :meth:`load`).
    """

    def __init__(self, monitor: str, mode: str, ema: WeightEMA | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"monitor mode must be min or max, got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.ema = ema
        self.metrics: dict[str, float] = {}  # the trained weights' at the last validation
        self.initial_metrics: dict[str, float] = {}  # the starting weights'
        self.ema_metrics: dict[str, float] = {}  # the EMA's at the last validation
        self.best: float | None = None  # best.pt's score on the monitored metric
        self.best_metrics: dict[str, float] = {}  # of the weights in best.pt (the start's at first)
        self.best_source = ""  # "start", "model" or "ema": which weights best.pt holds
        self.history: list[dict[str, float]] = []  # one row per validation: step, minutes, metrics (ema_*)

    def is_better(self, value: float | None) -> bool:
        """Whether ``value`` of the monitored metric beats best.pt's (any value does while there is none)."""
        if value is None:
            return False
        return self.best is None or (value < self.best if self.mode == "min" else value > self.best)

    def restart_ema(self, module: nn.Module) -> None:
        """Start the average afresh at ``module``'s weights (after they changed other than by training)."""
        if self.ema is not None:
            self.ema = WeightEMA(module, self.ema.decay)

    def start(self, metrics: Mapping[str, float], step: int, minutes: float) -> bool:
        """Record the starting weights' scores (the reference for "it learned"); True when they became best.pt's
        candidate (the monitored metric was scored)."""
        self.initial_metrics = dict(metrics)
        self.metrics = dict(metrics)
        self.record(step, minutes)
        value = metrics.get(self.monitor)
        if value is None:
            return False
        self.best, self.best_metrics, self.best_source = value, dict(metrics), "start"
        return True

    def choose(self, step: int, minutes: float) -> str | None:
        """After a validation set :attr:`metrics` (and :attr:`ema_metrics`): record it and return the weights that
        beat best.pt's (``"model"``, or ``"ema"`` when the EMA beats the trained weights too), else ``None``."""
        candidates = [("model", self.metrics)] + ([("ema", self.ema_metrics)] if self.ema is not None else [])
        improved = None
        for source, metrics in candidates:
            if self.is_better(metrics.get(self.monitor)):
                self.best, self.best_metrics, self.best_source = metrics[self.monitor], dict(metrics), source
                improved = source
        self.record(step, minutes)
        return improved

    def record(self, step: int, minutes: float) -> None:
        """Append the last validation to :attr:`history` (nothing without a validation set)."""
        if self.metrics:
            row = {"step": step, "minutes": minutes, **self.metrics}
            self.history.append(row | {f"ema_{k}": v for k, v in self.ema_metrics.items()})

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_fields(self, metrics: Mapping[str, float] | None = None) -> dict:
        """This state as :class:`~u2net.models.Checkpoint` fields (copies); ``metrics`` replaces the trained
        weights' scores (best.pt's file holds the best weights' scores)."""
        return {
            "metrics": dict(self.metrics if metrics is None else metrics),
            "best": self.best,
            "best_metrics": dict(self.best_metrics),
            "best_source": self.best_source,
            "initial_metrics": dict(self.initial_metrics),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "history": [dict(row) for row in self.history],
        }

    def check(self, state: Checkpoint, path: str | Path) -> None:
        """Raise ``ValueError`` naming ``path`` when ``state``'s EMA weights do not fit this run's EMA."""
        from ..models.state_dict import check_state_dict

        if self.ema is not None and state.ema:
            check_state_dict(self.ema.module, state.ema["model"], source=f"{path} (its EMA weights)")

    def load(self, state: Checkpoint, module: nn.Module) -> None:
        """Take the state from a checkpoint (checked with :meth:`check`); a run that kept no EMA starts one here
        at ``module``'s weights."""
        self.metrics, self.best = state.metrics, state.best
        self.best_metrics, self.best_source = state.best_metrics, state.best_source
        self.initial_metrics, self.history = state.initial_metrics, list(state.history)
        if self.ema is not None and state.ema:
            self.ema.load_state_dict(state.ema)
        else:
            self.restart_ema(module)

    # ------------------------------------------------------------------ reports
    def validation_line(self, step: int) -> str:
        """The console line after a validation: the scores, the start's in brackets, what best.pt holds."""
        keys = [k for k in ("mae", "max_f", "sm", "biou") if k in self.metrics]
        start = self.initial_metrics

        def show(metrics: Mapping[str, float]) -> str:
            return " ".join(f"{k} {metrics[k]:.4f}" + (f" ({start[k]:.4f})" if k in start else "") for k in keys)

        line = f"val step {step}{' (start in brackets)' if start else ''}: {show(self.metrics)}"
        if self.ema_metrics:
            line += f" | ema: {show(self.ema_metrics)}"
        if self.best is not None:
            line += f" | best.pt: {self.best_source} ({self.monitor} {self.best:.4f})"
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
