"""precision=auto trains in bf16 only where bf16 gradients agree with fp32 ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from u2net.engine import LRSchedule, Trainer, TrainerConfig
from u2net.engine import trainer as trainer_module
from u2net.engine.precision import MIN_GRADIENT_AGREEMENT, gradient_agreement
from u2net.losses import DeepSupervisionLoss

from .conftest import lively_u2netp
from .helpers_training import _data


class Cancelling(nn.Module):
    """Adds ``offset`` to its features and takes it off again after the next convolution: exact in
    fp32, but in bf16 (8 mantissa bits) a large offset swamps the features, as the near-constant
    channel of about 228 does in the published U²-Net†'s stage2d."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.offset = offset
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        h = torch.relu(self.features(x)) + self.offset
        return (self.head(h) - self.offset * self.head.weight.sum(),)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    masks = (torch.rand(4, 1, 32, 32, generator=generator) > 0.5).float()
    return images, masks


def test_bf16_gradients_agree_on_ordinary_weights_and_not_where_bf16_cancels() -> None:
    images, masks = _batch()
    loss = DeepSupervisionLoss()
    assert gradient_agreement(Cancelling(0.0), loss, images, masks, "bf16") > 0.99
    assert gradient_agreement(Cancelling(1000.0), loss, images, masks, "bf16") < MIN_GRADIENT_AGREEMENT
    assert gradient_agreement(Cancelling(1000.0), loss, images, masks, "fp32") == pytest.approx(1.0)
    model = lively_u2netp()
    assert gradient_agreement(model, loss, torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64), "bf16") > 0.95


def test_the_check_leaves_batchnorm_statistics_and_gradients_as_they_were() -> None:
    model = lively_u2netp().train()  # train mode: each forward would move the running statistics
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    gradient_agreement(model, DeepSupervisionLoss(), torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64), "bf16")
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def _trainer(root, out_dir, model: nn.Module, precision: str) -> Trainer:
    config = TrainerConfig(out_dir=str(out_dir), max_steps=1, progress=False, device="cpu", precision=precision)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return Trainer(model, DeepSupervisionLoss(), optimizer, LRSchedule("constant"), _data(root), config)


@pytest.mark.parametrize(("offset", "expected"), [(0.0, "bf16"), (1000.0, "fp32")])
def test_auto_precision_falls_back_to_fp32_when_bf16_gradients_disagree(
    tiny_synthetic, tmp_path, monkeypatch, capsys, offset, expected
) -> None:
    # As on a CPU with fast bf16 (or a GPU), whatever this machine has.
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda precision, device: "bf16")
    trainer = _trainer(tiny_synthetic, tmp_path, Cancelling(offset), "auto")
    trainer.fit()
    assert trainer.precision == expected
    assert ("training in fp32" in capsys.readouterr().out) == (expected == "fp32")


def test_an_explicit_bf16_is_kept(tiny_synthetic, tmp_path) -> None:
    trainer = _trainer(tiny_synthetic, tmp_path, Cancelling(1000.0), "bf16")
    trainer.fit()
    assert trainer.precision == "bf16"
