"""Process-group set-up for single-process and ``torchrun`` (DDP) training."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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


def setup_distributed() -> DistInfo:
    """Join the ``torchrun`` process group if there is one, and pick this process's device.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the group is initialised with
    NCCL on CUDA and gloo on CPU; each process uses ``cuda:LOCAL_RANK``. A plain ``python``
    launch is a world of one on ``cuda:0`` or the CPU.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "launch at most that many processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(minutes=60),  # rank 0 evaluates while the others wait
            **({"device_id": device} if cuda else {}),
        )
    return DistInfo(rank, world, local_rank, device)


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
    if info.distributed:
        dist.all_reduce(value)
        value /= info.world_size
    return value


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (a list of one in a world of one)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the processes.

    Without SyncBatchNorm (CPU processes) each replica tracks the statistics of its own
    batches; averaging them before evaluating or saving keeps the replicas identical.
    """
    if not info.distributed:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= info.world_size
