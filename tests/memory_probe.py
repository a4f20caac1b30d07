"""What autograd keeps for backward, counted tensor by tensor (exact, unlike a process's RSS)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _Producers(TorchDispatchMode):
    """Records, for each storage made while active, the aten operation that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.of: dict[int, str] = {}  # storage address -> operation

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            # Views and in-place results share an input's storage: its maker stays the same.
            if isinstance(t, torch.Tensor) and _ptr(t) not in inputs:
                self.of[_ptr(t)] = func.overloadpacket.__name__
        return out


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def kept_for_backward(module: torch.nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Bytes kept for backward after ``module(*inputs)``, by what keeps them.

    Counts every tensor that passes through ``saved_tensors_hooks``: the tensors autograd
    saves, the inputs activation checkpointing keeps of its regions, and the outputs that
    selective checkpointing caches for its recomputation (which
    :func:`~isa_explorer.models.checkpointing.checkpointed` routes through the same hooks with
    ``respect_saved_tensors_hooks=True``). What checkpointing recomputes is not counted.
    Each storage counts once; the module's parameters and ``inputs`` are left out.

    Returns:
        Bytes by holder: the autograd node whose output the tensor is (``"MmBackward0"``),
        or, for a tensor without one (a SAC-cached output, detached; a bool mask), the aten
        operation that made it, as ``"aten.mm"``; ``"input"`` for anything else.
    """
    kept: dict[int, tuple[int, str]] = {}
    skip = {_ptr(p) for p in module.parameters()}
    skip.update(_ptr(x) for x in inputs)
    producers = _Producers()

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = _ptr(t)
        if ptr not in skip:
            if t.grad_fn is not None:
                holder = t.grad_fn.name()
            else:
                holder = f"aten.{producers.of[ptr]}" if ptr in producers.of else "input"
            kept.setdefault(ptr, (t.untyped_storage().nbytes(), holder))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), producers:
        module(*inputs)
    by: dict[str, int] = {}
    for nbytes, holder in kept.values():
        by[holder] = by.get(holder, 0) + nbytes
    return by
