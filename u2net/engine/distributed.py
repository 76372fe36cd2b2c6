"""torch.distributed without code changes: detect torchrun's environment, shard, reduce, rank 0 writes.

``torchrun --nproc_per_node=N train.py ...`` (or multi-node with ``--nnodes``/``--rdzv-*``) sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup_distributed` then joins the process group
(nccl on CUDA, gloo on the CPU). Without those variables everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


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
