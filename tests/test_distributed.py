"""torchrun on the CPU (gloo, 2 processes): same result as one process with the same global batch,
resume, reduced validation, multi-node rendezvous, and a crashing rank ending the job instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from u2net.data import ResumableBatchSampler, generate_synthetic_dataset

from .conftest import REPO
from .helpers_training import _free_port, _trainer

COMMON = [
    "data.synthetic.num_train=16",
    "data.synthetic.num_val=6",
    "data.image_size=48",
    "data.crop_size=40",
    "data.num_workers=0",
    "trainer.device=cpu",  # gloo on any machine, a GPU one included
    "sched=constant",
    "trainer.freeze_bn=true",  # per-sample computation independent of how the batch is split
    "trainer.precision=fp32",
    "trainer.val_every=2",
    "trainer.validate_at_start=false",
    "trainer.progress=false",
    "logger=none",
]


def _run(
    tmp_path, name: str, nproc: int, *overrides: str, timeout: int = 300, data: str = "data"
) -> subprocess.CompletedProcess:
    """train.py under torchrun with ``nproc`` processes (0: a plain ``python train.py``) on ``tmp_path/data``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    launcher = launcher if nproc > 0 else [sys.executable]
    command = [*launcher, str(REPO / "train.py"), f"paths.data_dir={tmp_path / data}"]
    command += [f"hydra.run.dir={tmp_path / name}", *COMMON, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share two cores
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def _state(tmp_path, name: str) -> dict:
    return torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)


def test_sampler_shards_a_global_batch() -> None:
    single = iter(ResumableBatchSampler(20, 4, seed=3))
    ranks = [iter(ResumableBatchSampler(20, 2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for _ in range(7):  # crosses an epoch boundary (5 steps per epoch)
        assert next(single) == next(ranks[0]) + next(ranks[1])


@pytest.mark.subprocess
def test_two_processes_match_one_and_resume(tmp_path) -> None:
    one = _run(tmp_path, "one", 0, "data.batch_size=4", "trainer.max_steps=4")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(tmp_path, "two", 2, "data.batch_size=2", "trainer.max_steps=4")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _state(tmp_path, "one"), _state(tmp_path, "two")
    # Adam normalises each update, so float-rounding differences in the averaged gradients can move a
    # weight by a small fraction of one step (lr = 1e-3); anything like a different batch moves it by ~lr.
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-3, atol=1e-4, msg=key)
    # validation is reduced over both ranks' shares: the same images, the same scores
    assert b["metrics"]["mae"] == pytest.approx(a["metrics"]["mae"], abs=1e-4)
    assert b["metrics"]["max_f"] == pytest.approx(a["metrics"]["max_f"], abs=1e-3)
    # only rank 0 writes: one checkpoint folder, one set of files
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]

    half = _run(tmp_path, "resumed", 2, "data.batch_size=2", "trainer.max_steps=2")
    assert half.returncode == 0, half.stderr[-3000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.pt"
    resumed = _run(tmp_path, "resumed", 2, "data.batch_size=2", "trainer.max_steps=4", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c = _state(tmp_path, "resumed")
    assert c["step"] == 4
    for key, value in b["model"].items():
        assert torch.equal(c["model"][key], value), key


@pytest.mark.subprocess
def test_a_failing_rank_ends_the_job(tmp_path) -> None:
    failed = _run(
        tmp_path,
        "fail",
        2,
        "data.batch_size=2",
        "trainer.max_steps=6",
        "loss._target_=tests.ddp_helpers.FailingOnRank",
        timeout=240,
    )
    assert failed.returncode != 0
    assert "injected failure on rank 1" in failed.stderr


@pytest.mark.subprocess
def test_torchrun_with_one_process_equals_a_plain_run(tmp_path) -> None:
    plain = _run(tmp_path, "plain", 0, "data.batch_size=4", "trainer.max_steps=2", "trainer.val_every=0")
    assert plain.returncode == 0, plain.stderr[-3000:]
    single = _run(tmp_path, "torchrun", 1, "data.batch_size=4", "trainer.max_steps=2", "trainer.val_every=0")
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _state(tmp_path, "plain"), _state(tmp_path, "torchrun")
    for key, value in a["model"].items():  # DDP over one rank: the same data, gradients and steps
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.subprocess
def test_two_nodes_with_their_own_disks_match_one_process(tmp_path) -> None:
    """``--nnodes=2`` with c10d rendezvous, as on a cluster: node A runs rank 0, node B two ranks and has
    no shared storage (its own data and run folders), so it makes its own copy of the synthetic set.
    One training image is corrupt and skipped: every rank must train on rank 0's list of pairs."""
    generate_synthetic_dataset(tmp_path / "data_a" / "synthetic", num_train=16, num_val=6, seed=0, progress=False)
    first = sorted((tmp_path / "data_a" / "synthetic" / "DUTS-TR" / "DUTS-TR-Image").iterdir())[0]
    first.write_bytes(b"not a jpeg")
    port = _free_port()  # for the rendezvous store
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    skipping = ["data.on_invalid=skip", "data.batch_size=2"]
    nodes = []
    for node, nproc in (("a", 1), ("b", 2)):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--nproc_per_node={nproc}"]
        command += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test-job"]
        command += [str(REPO / "train.py"), f"paths.data_dir={tmp_path / f'data_{node}'}"]
        command += [f"hydra.run.dir={tmp_path / f'node_{node}'}", *COMMON, *skipping, "trainer.max_steps=2"]
        nodes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr.decode()[-3000:]
    # 3 ranks × 2 images = one process with a batch of 6 over the same 15 usable images
    plain = _run(
        tmp_path, "plain", 0, "data.on_invalid=skip", "data.batch_size=6", "trainer.max_steps=2", data="data_a"
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = _state(tmp_path, "plain"), _state(tmp_path, "node_a")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-3, atol=1e-4, msg=key)
    assert b["metrics"]["mae"] == pytest.approx(a["metrics"]["mae"], abs=1e-4)
    # node B's first rank made its own copy of the set (the second rank waited for it)
    assert (tmp_path / "data_b" / "synthetic" / "DONE").is_file()
    assert not (tmp_path / "node_b" / "checkpoints").exists()  # only rank 0 (on node A) writes


def test_accumulation_all_reduces_once_per_optimizer_step(tiny_synthetic, tmp_path, monkeypatch) -> None:
    """In-process DDP (gloo, one rank): the gradient buckets are all-reduced on the last micro-batch
    only, so K accumulated micro-batches cost what one does."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    port = _free_port()
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        reduced = {}
        for accum in (1, 3):
            trainer = _trainer(tiny_synthetic, tmp_path / str(accum), max_steps=1, grad_accum=accum)
            assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
            calls = []

            def counting(state, bucket, calls=calls):
                calls.append(bucket.index())
                return allreduce_hook(state, bucket)

            trainer.model.register_comm_hook(None, counting)
            trainer._setup_data()
            batches = iter(trainer.data.train_loader(0))
            trainer.train_step([next(batches) for _ in range(accum)])
            reduced[accum] = len(calls)
        assert reduced[3] == reduced[1] > 0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.subprocess
def test_a_refusal_on_rank_0_stops_every_rank_with_its_message(tmp_path) -> None:
    # bad data: rank 0 finds it; the other rank must not wait for pairs that never come
    gone = f"data.train=[{{name:gone,root:{tmp_path / 'gone'},images:im,masks:gt}}]"
    missing = _run(tmp_path, "missing", 2, gone, "trainer.max_steps=2", timeout=120)
    assert missing.returncode != 0
    assert "error: dataset gone: image folder" in missing.stderr
    assert "error: rank 0 could not prepare the data: dataset gone" in missing.stderr  # rank 1's line
    # a run folder holding checkpoints: rank 0 refuses, and so does every rank
    (tmp_path / "taken" / "checkpoints").mkdir(parents=True)
    (tmp_path / "taken" / "checkpoints" / "last.pt").write_bytes(b"an earlier run's checkpoint")
    taken = _run(tmp_path, "taken", 2, "data.batch_size=2", "trainer.max_steps=2", timeout=120)
    assert taken.returncode != 0 and taken.stderr.count("holds checkpoints of an earlier run (last.pt)") == 2
    assert (tmp_path / "taken" / "checkpoints" / "last.pt").read_bytes() == b"an earlier run's checkpoint"
