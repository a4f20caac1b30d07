"""Evaluation on several processes (``torchrun``): process group set-up and an exact sharding.

``torch.utils.data.DistributedSampler`` pads the dataset with repeated images so that every
process gets as many; counting those twice would bias the metrics. :class:`ShardSampler` splits
the images without repeats (process ``r`` of ``n`` takes images ``r, r + n, r + 2n, ...``) and the
confusion matrices are summed across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset: every image on exactly one process.

    Args:
        length: Number of items in the dataset.
        rank: This process (default: from ``torch.distributed``).
        world_size: Number of processes (default: from ``torch.distributed``).
    """

    def __init__(self, length: int, rank: int | None = None, world_size: int | None = None):
        r, n = world()
        self.length = length
        self.rank = r if rank is None else rank
        self.world_size = n if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def init_from_env(device: str = "cpu") -> tuple[int, int, str]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    With ``WORLD_SIZE > 1`` the default group is initialised (NCCL for CUDA devices, Gloo on
    CPU) and each process takes the GPU ``LOCAL_RANK``; otherwise nothing happens.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``(rank, world_size, device)`` with the device this process should use.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return 0, 1, device
    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world_size = world()
    return rank, world_size, device


def close() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["ShardSampler", "close", "init_from_env", "world"]
