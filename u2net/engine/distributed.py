"""torch.distributed without code changes: detect torchrun's environment, shard, reduce, rank 0 writes.

``torchrun --nproc_per_node=N train.py ...`` (or multi-node with ``--nnodes``/``--rdzv-*``) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup_distributed` then joins the process group
(nccl on CUDA, gloo on the CPU). Without those variables everything here is a no-op.

The trainer's share: :func:`rank_device` and :func:`wrap_model` (SyncBatchNorm, DDP), :func:`gradient_sync`
(one all-reduce per optimizer step), :func:`share_data` (every rank trains on rank 0's list of pairs).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..data import DatasetCheckError
from ..data.datamodule import SaliencyDataModule


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # launched by torchrun: a process group is joined (also with one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group torchrun describes (once per process); a plain run gets rank 0 of 1."""
    # torchrun sets these even for one process; such a job runs the DDP code path of a larger one.
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistContext()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; start "
                    "torchrun with --nproc_per_node at most that, or train on the CPU with trainer.device=cpu"
                )
            torch.cuda.set_device(local_rank)
        # A finite timeout turns a peer that died mid-collective into an error instead of a hang.
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    return DistContext(rank, world_size, local_rank, enabled=True)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.enabled:
        dist.barrier()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a stop request, a non-finite loss)."""
    if not ctx.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(ctx: DistContext, obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tensors(ctx: DistContext, tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values, in place (no-op when not distributed)."""
    if not ctx.enabled:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def gather_objects(ctx: DistContext, obj) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` when not distributed)."""
    if not ctx.enabled:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup_distributed(ctx: DistContext) -> None:
    """Leave the process group if this process joined one."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """The device this rank trains on: its own GPU (``cuda:LOCAL_RANK``) under torchrun, else ``device``."""
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


def wrap_model(
    module: nn.Module, ctx: DistContext, device: torch.device, sync_batchnorm: bool = False, compile: bool = False
) -> tuple[nn.Module, nn.Module]:
    """``(module, model)`` for ``module`` on this rank's ``device``: the bare module (with SyncBatchNorm layers
    when asked, under torchrun), what checkpoints hold; and what runs the steps: that module in
    DistributedDataParallel under torchrun, compiled with ``torch.compile`` when asked."""
    if sync_batchnorm and ctx.enabled:
        if device.type != "cuda":
            raise ValueError("trainer.sync_batchnorm needs CUDA; on the CPU use trainer.freeze_bn=true instead")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    model = module
    if ctx.enabled:
        device_ids = [ctx.local_rank] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    if compile:
        model = torch.compile(model)
    return module, model


def gradient_sync(ctx: DistContext, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Where a micro-batch's backward pass runs: gradients are all-reduced once per optimizer step, on the
    ``last`` micro-batch; the others accumulate locally (DDP's ``no_sync``)."""
    return contextlib.nullcontext() if last or not ctx.enabled else model.no_sync()


def share_data(ctx: DistContext, data: SaliencyDataModule, seed: int) -> None:
    """Set up ``data`` on every rank with rank 0's list of pairs.

    Rank 0 makes the synthetic set (if configured), scans and checks every file, and hands its pairs to the
    other ranks, so that all of them train on the same list (with on_invalid=skip too). Then the first rank
    of each other node finds the synthetic set on shared storage or makes that node its own copy (no two
    processes ever generate into one folder) and checks that the node sees every file. A failure anywhere is
    raised on every rank: none waits forever.
    """
    failure, pairs = None, None
    if ctx.is_main:
        try:
            data.setup(seed=seed)
            pairs = data.pairs()
        except Exception as exc:
            failure = exc
    pairs, message = broadcast_object(ctx, (pairs, None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if message is not None:
        raise DatasetCheckError(f"rank 0 could not prepare the data: {message}")
    problem = _check_node_copy(ctx, data, pairs) if not ctx.is_main and ctx.local_rank == 0 else None
    problems = [p for p in gather_objects(ctx, problem) if p is not None]
    if problems:
        raise DatasetCheckError(problems[0])
    if not ctx.is_main:
        data.setup_from_pairs(*pairs)


def _check_node_copy(ctx: DistContext, data: SaliencyDataModule, pairs: tuple) -> str | None:
    """On the first rank of a node other than rank 0's: prepare the node's data; what is wrong there, if anything."""
    try:
        data.prepare()
        missing = [str(path) for pair in itertools.chain(*pairs[:2]) for path in pair if not Path(path).is_file()]
    except Exception as exc:
        return f"rank {ctx.rank}: {exc}"
    if missing:
        return (
            f"rank {ctx.rank}: {len(missing)} file(s) that rank 0 uses are missing there, e.g. "
            f"{missing[0]}; every node needs the datasets at the same path, on shared storage or copied"
        )
    return None
