"""What a training run reports beyond the console: configs/logger/*.yaml build one of these loggers.

The trainer calls :meth:`~RunLogger.open` on rank 0 only (the one writer) when training starts, then logs
through the same methods on every rank: a logger that was never opened writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch


class RunLogger(Protocol):
    """What the trainer calls; :class:`NullLogger` and :class:`TensorBoardLogger` implement it."""

    image_log_count: int  # validation images the trainer hands to log_predictions (0: none)

    def open(self, run_dir: str | os.PathLike) -> None: ...

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def log_predictions(
        self, step: int, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, mean: Sequence, std: Sequence
    ) -> None: ...

    def close(self) -> None: ...

    def trainer_options(self) -> dict: ...


class NullLogger:
    """``logger=none``: nothing beyond the console and the checkpoints."""

    image_log_count = 0

    def open(self, run_dir: str | os.PathLike) -> None:
        """Nothing to open."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Nothing is written."""

    def log_predictions(
        self, step: int, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, mean: Sequence, std: Sequence
    ) -> None:
        """Nothing is written."""

    def close(self) -> None:
        """Nothing to close."""

    def trainer_options(self) -> dict:
        """The :class:`~u2net.engine.TrainerConfig` fields that record this logger's settings in checkpoints."""
        return {"tensorboard": False, "image_log_count": 0}


class TensorBoardLogger(NullLogger):
    """Event files in ``<run dir>/tensorboard`` (``tensorboard --logdir runs``): scalars, and per validation
    a grid of ``image_log_count`` validation images (input, mask, prediction)."""

    def __init__(self, image_log_count: int = 4) -> None:
        if image_log_count < 0:
            raise ValueError(f"logger.image_log_count must be 0 (off) or more, got {image_log_count}")
        self.image_log_count = image_log_count
        self._writer = None

    def open(self, run_dir: str | os.PathLike) -> None:
        """Start an event file in ``run_dir/tensorboard``."""
        from torch.utils.tensorboard import SummaryWriter  # imported here: slow, and only rank 0 needs it

        self.close()
        self._writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """One scalar per tag (``train/loss``, ``val/mae`` ...) at ``step``."""
        if self._writer is None:
            return
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)

    def log_predictions(
        self, step: int, images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, mean: Sequence, std: Sequence
    ) -> None:
        """``images`` (normalised with ``mean``/``std``), their ``masks`` and predicted ``probs`` as one grid."""
        if self._writer is None:
            return
        self._writer.add_image("val/input_gt_prediction", prediction_grid(images, masks, probs, mean, std), step)

    def close(self) -> None:
        """Flush and close the event file; later calls write nothing until :meth:`open`."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def trainer_options(self) -> dict:
        """The :class:`~u2net.engine.TrainerConfig` fields that record this logger's settings in checkpoints."""
        return {"tensorboard": True, "image_log_count": self.image_log_count}


def prediction_grid(
    images: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor, mean: Sequence, std: Sequence
) -> torch.Tensor:
    """A 3×H×W image on the CPU: one row each for the inputs (un-normalised), ground truth and predictions;
    one column per image of ``images`` (``masks`` and ``probs`` may hold more: the first ones are shown)."""
    n = images.shape[0]
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    shown = (images.float() * std_t + mean_t).clamp(0, 1)
    rows = [shown, masks[:n].float().expand(-1, 3, -1, -1), probs[:n].expand(-1, 3, -1, -1)]
    return torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1).cpu()


def logger_from_options(tensorboard: bool, image_log_count: int) -> RunLogger:
    """The logger a :class:`~u2net.engine.TrainerConfig`'s ``tensorboard``/``image_log_count`` describe (for a
    trainer built without one, as in scripts and tests)."""
    return TensorBoardLogger(image_log_count) if tensorboard else NullLogger()
