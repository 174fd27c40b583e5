"""Distributed set-up for training: torchrun's environment, the process group, collectives.

Distributed training is PyTorch's own: launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment), :func:`setup_distributed`
initialises the process group (NCCL on CUDA, gloo on CPU). The trainer wraps the objective in
:class:`~torch.nn.parallel.DistributedDataParallel` (:func:`wrap_ddp`), shards every epoch with
:class:`~torch.utils.data.distributed.DistributedSampler`, lets only rank 0 validate and write
files, broadcasts its validation result (:func:`broadcast_object`) so that every rank takes the
same scheduler and early-stopping decisions, and broadcasts BatchNorm running statistics from rank
0 after every epoch (:func:`sync_buffers`), so all ranks hold identical weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistContext:
    """Read torchrun's environment and initialise the process group when ``WORLD_SIZE > 1``.

    ``device`` ``None``/``"auto"``: ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev)


def wrap_ddp(ctx: DistContext, module: nn.Module) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel in a multi-process job, else itself."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def broadcast_object(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself in a single process)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """The mean of ``values`` over ranks, key by key."""
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself in a single process)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Broadcast BatchNorm running statistics (all buffers) from rank 0."""
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (nothing in a single process)."""
    if ctx.distributed:
        dist.barrier()
