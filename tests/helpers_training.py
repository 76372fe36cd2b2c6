"""Helpers of the training tests: a data module on the tiny synthetic set, a CPU trainer on it, and a free
local port for a process group's rendezvous."""

from __future__ import annotations

import socket

import torch

import u2net
from u2net.data import SaliencyDataModule
from u2net.engine import LRSchedule, Trainer, TrainerConfig
from u2net.losses import DeepSupervisionLoss


def _data(root, **overrides) -> SaliencyDataModule:
    def source(split):
        return [{"name": split, "root": str(root / split), "images": f"{split}-Image", "masks": f"{split}-Mask"}]

    kwargs = dict(batch_size=4, num_workers=0, image_size=48, crop_size=40, progress=False, check="header")
    kwargs.update(overrides)
    return SaliencyDataModule(train=source("DUTS-TR"), val=source("DUTS-TE"), **kwargs)


def _trainer(
    root, out_dir, max_steps, loss_fn=None, precision="fp32", schedule="cosine", lr=1e-3, weight_decay=0.0, **cfg
) -> Trainer:
    torch.manual_seed(0)
    model = u2net.create_model("u2netp")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    config = TrainerConfig(
        out_dir=str(out_dir), max_steps=max_steps, progress=False, device="cpu", precision=precision, seed=3, **cfg
    )
    schedule = LRSchedule(schedule, warmup_steps=2)
    return Trainer(model, loss_fn or DeepSupervisionLoss(), optimizer, schedule, _data(root), config, {"note": "t"})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
