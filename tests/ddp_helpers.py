"""Objects that tests plug into train.py through Hydra's ``_target_`` (importable as ``tests.ddp_helpers``)."""

from __future__ import annotations

import os

from u2net.losses import DeepSupervisionLoss


class FailingOnRank(DeepSupervisionLoss):
    """The usual loss, except that rank ``rank`` raises on its ``call``-th call: a crashing worker."""

    def __init__(self, rank: int = 1, call: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_rank, self.fail_call, self.calls = rank, call, 0

    def forward(self, outputs, target):
        self.calls += 1
        if int(os.environ.get("RANK", "0")) == self.fail_rank and self.calls == self.fail_call:
            raise RuntimeError(f"injected failure on rank {self.fail_rank}")
        return super().forward(outputs, target)
