"""What a training run reports beyond the console: configs/logger/*.yaml build a :class:`LoggerConfig`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LoggerConfig:
    """TensorBoard event files in ``<run dir>/tensorboard`` (``tensorboard --logdir runs``), or nothing."""

    tensorboard: bool = True
    image_log_count: int = 4  # validation images (input, mask, prediction) shown per validation

    def trainer_options(self) -> dict:
        """The :class:`~u2net.engine.TrainerConfig` fields this sets (the trainer does the logging)."""
        return asdict(self)
