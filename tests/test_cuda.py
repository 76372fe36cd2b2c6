"""The GPU fast path on CUDA: autocast precisions with fused Adam and channels_last, torch.compile,
torchrun with nccl and SyncBatchNorm, and CUDA inference. Skipped on machines without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import u2net
from u2net.engine import Trainer, TrainerConfig
from u2net.inference import Predictor
from u2net.losses import DeepSupervisionLoss

from .conftest import REPO, save_tiny_checkpoint
from .helpers_training import _data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda_trainer(root, out_dir, precision: str, compile: bool = False, max_steps: int = 3) -> Trainer:
    torch.manual_seed(0)
    model = u2net.create_model("u2netp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    config = TrainerConfig(
        out_dir=str(out_dir), max_steps=max_steps, val_every=max_steps, progress=False, device="cuda",
        precision=precision, channels_last=True, compile=compile, seed=3, tensorboard=False,
    )  # fmt: skip
    return Trainer(model, DeepSupervisionLoss(), optimizer, None, _data(root, pin_memory=True), config)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_steps(tiny_synthetic, tmp_path, precision: str) -> None:
    trainer = _cuda_trainer(tiny_synthetic, tmp_path, precision)
    before = [p.detach().clone() for p in trainer.module.parameters()]
    metrics = trainer.fit()
    assert trainer.step == 3 and 0 <= metrics["mae"] <= 1
    assert all(p.is_cuda for p in trainer.module.parameters())
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.scaler.is_enabled() == (precision == "fp16")
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.module.parameters()))
    assert all(torch.isfinite(p).all() for p in trainer.module.parameters())
    # checkpoints hold plain CPU-loadable weights that give the model's outputs
    model = u2net.load_model(tmp_path / "checkpoints" / "last.pt")
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = trainer.module.eval().float()(x.cuda())[0].cpu()
        torch.testing.assert_close(model(x)[0], expected, rtol=1e-3, atol=1e-3)


def test_fp16_resumes_from_an_fp32_checkpoint(tiny_synthetic, tmp_path) -> None:
    _cuda_trainer(tiny_synthetic, tmp_path, "fp32", max_steps=2).fit()
    resumed = _cuda_trainer(tiny_synthetic, tmp_path, "fp16", max_steps=3)
    resumed.fit(ckpt_path=str(tmp_path / "checkpoints" / "last.pt"))  # its scaler state is empty
    assert resumed.step == 3 and resumed.scaler.is_enabled()


@pytest.fixture
def no_tf32():
    """Plain fp32 convolutions: TF32's 10-bit mantissa, compounded over U²-Net's depth, moves a random
    model's losses by percents between two kernel choices; comparisons need true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow  # compiling U²-Net's training and validation graphs takes minutes
def test_compiled_training(tiny_synthetic, tmp_path, no_tf32) -> None:
    trainer = _cuda_trainer(tiny_synthetic, tmp_path, "fp32", compile=True, max_steps=2)
    metrics = trainer.fit()
    assert trainer.step == 2 and 0 <= metrics["mae"] <= 1
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert not any(key.startswith("_orig_mod.") for key in state)  # checkpoints hold the bare model
    # The compiled graph computes what the eager model computes. Compared in eval mode (at the
    # validation size, already compiled): in train mode the deepest stages normalise over a handful of
    # values per channel, which turns rounding differences into percent-level loss differences.
    x = torch.randn(4, 3, 48, 48, device="cuda").contiguous(memory_format=torch.channels_last)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(x)[0], trainer.module(x)[0], rtol=1e-3, atol=1e-4)


@pytest.mark.subprocess
def test_torchrun_nccl_with_sync_batchnorm(tmp_path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += [str(REPO / "train.py"), f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"]
    command += ["data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.image_size=64", "data.crop_size=48"]
    command += ["trainer=gpu", "trainer.max_steps=4", "trainer.val_every=2", "trainer.sync_batchnorm=true"]
    command += ["data.batch_size=4", "trainer.progress=false", "logger=none"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 4
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in last["model"])
    u2net.load_model(tmp_path / "run" / "checkpoints" / "last.pt")  # SyncBatchNorm weights load as BatchNorm


def test_cuda_predictor_matches_cpu(tmp_path) -> None:
    save_tiny_checkpoint(tmp_path / "tiny.pt")
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    on_cpu = Predictor.from_path(tmp_path / "tiny.pt", device="cpu").predict(image)
    on_gpu = Predictor.from_path(tmp_path / "tiny.pt", device="cuda").predict(image)
    assert on_gpu.shape == on_cpu.shape == (90, 120)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3)
