"""Several processes (``torchrun``): the one process-group set-up, for training and evaluation.

:func:`setup_distributed` joins the group ``torchrun`` describes (NCCL on CUDA, Gloo on CPU)
and picks this process's device. Evaluation shards a dataset with :class:`ShardSampler` (images
``r, r + n, ...``; ``DistributedSampler`` pads with repeats, which would bias the metrics) and
sums the confusion matrices; training draws from a shuffled ``DistributedSampler``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is in use."""
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> DistInfo:
    """Join the ``torchrun`` process group if there is one, and pick this process's device.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each CUDA process uses ``cuda:LOCAL_RANK``; a plain
    ``python`` launch is a world of one.

    Args:
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``None``: CUDA when available.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if cuda and world_size > 1:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "launch at most that many processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    elif cuda:
        dev = torch.device(device if device not in (None, "cuda") else "cuda:0")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(minutes=60),  # rank 0 evaluates while the others wait
            **({"device_id": dev} if cuda else {}),
        )
    if world_size > 1 and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world_size, local_rank, dev)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` without a process group)."""
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


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for all processes (no-op in a world of one)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over the processes (a detached copy)."""
    value = value.detach().clone()
    average_tensors([value], info)
    return value


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (a list of one in a world of one)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def average_tensors(tensors: Iterable[torch.Tensor], info: DistInfo) -> None:
    """Average tensors over the processes, in place (no-op in a world of one)."""
    for t in tensors if info.distributed else ():
        dist.all_reduce(t)
        t /= info.world_size


def average_training_state(model: torch.nn.Module, info: DistInfo) -> None:
    """Average the buffers a head updates in training (mmseg's EMAHead: its bases, by momentum;
    :meth:`~isa_explorer.heads.protocol.Head.training_state`) over the processes, in place."""
    average_tensors(model.decoder.training_state(), info)


#: Why a distributed run on CPUs keeps plain BatchNorm (SyncBatchNorm's training forward
#: raises ``ValueError`` for CPU tensors).
SYNC_BN_NEEDS_CUDA = (
    "SyncBatchNorm needs CUDA: each CPU process keeps its own BN batch stats (their running "
    "statistics are averaged across processes before every evaluation and checkpoint)"
)


def sync_batchnorm(model: torch.nn.Module, info: DistInfo) -> tuple[torch.nn.Module, str | None]:
    """``model`` with SyncBatchNorm for a distributed CUDA run, and why not where it is not.

    Args:
        model: The model, on its device.
        info: This process's place in the run.

    Returns:
        ``(model, reason)``: for several CUDA processes every ``BatchNorm*d`` converted (same
        parameters, buffers and state-dict keys); else ``model`` as it was. ``reason`` is
        :data:`SYNC_BN_NEEDS_CUDA` for several CPU processes, else ``None``.
    """
    if not info.distributed:
        return model, None
    if info.device.type != "cuda":
        return model, SYNC_BN_NEEDS_CUDA
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model), None
