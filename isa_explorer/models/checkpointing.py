"""Activation checkpointing of the relation blocks, whole or selective (:func:`checkpointed`).

The ISA head runs :func:`keep_products` in every training step, and full checkpointing when
asked (``ISADecoder.checkpoint_relations``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator

import torch
import torch.utils.checkpoint
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from isa_explorer.models.layers import AttnImpl

#: Outputs selective checkpointing keeps (:func:`keep_products`): matrix products (token 1x1
#: convolutions are ``mm``/``addmm``) and attention kernels (SDPA on CPU and CUDA; softmax).
KEPT_OPS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "mm",
        "addmm",
        "baddbmm",
        "convolution",
        "_softmax",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
)
# What SAC keeps passes the saved-tensor hooks around it (save_on_cpu, tests/memory_probe.py).
_SAC_HOOKS = {"respect_saved_tensors_hooks": True}
if not _SAC_HOOKS.keys() <= inspect.signature(torch.utils.checkpoint.checkpoint).parameters.keys():
    _SAC_HOOKS = {}  # torch < 2.14: it bypasses them


def keep_products(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    """Selective-checkpointing policy: keep :data:`KEPT_OPS`' outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op in KEPT_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def checkpointed(
    block: nn.Module, t: torch.Tensor, impl: AttnImpl = "fused", policy: Callable | None = None
) -> torch.Tensor:
    """``block(t, impl) -> (B, L, C)`` under ``torch.utils.checkpoint`` (non-reentrant): the
    block's saved tensors are dropped after the forward, and backward reruns it to rebuild them.

    ``policy=None`` (full) keeps only ``t``. ``policy=keep_products`` (selective, the ISA
    head's training default) also keeps the outputs of matrix products and attention kernels,
    so only ReLU, BatchNorm's normalisation and layout copies are redone. Kept per block, in
    channels a position: ``t`` (C), the four query/key products before BatchNorm (4 Ck), the
    values (C), the attention output (C) and log-sum-exp (C / Ck heads), the output
    projection's product (C). The explicit path keeps its softmax (L) and redoes both batched
    products: SAC refuses a kept tensor modified in place (its ``mul_``, "... has been
    mutated").

    :func:`_frozen_batchnorm_stats` keeps the recomputation's train-mode BatchNorm from
    updating its buffers twice: logits, gradients and buffers equal a plain step's bit for bit.
    SyncBatchNorm would repeat its all-reduce (pytorch/pytorch#96136): with a ``policy``, a
    block holding one runs plain.

    ISA head at 64x128 (2048 -> 512 / 256, batch 1, fused, CPU): 384 MiB kept for backward
    plain, 280 selective (the former hand-made saved-tensor hooks: 288), 120 full
    (``benchmarks/head_training_profile.py``); the two blocks' step took 1.9-2.3 CPU-s
    selective, 1.9-2.2 plain, 2.4-2.9 full (explicit path: 1.8-2.0, 1.6-2.0, 2.1-2.2).

    Args:
        block: A relation block, called as ``block(t, impl)``; its forward hooks fire again.
        t: Tokens ``(B, L, C)``.
        impl: Attention implementation (:func:`~isa_explorer.models.layers.attention`).
        policy: ``None`` or a selective-checkpointing policy (:func:`keep_products`).
    """
    if policy is not None and any(isinstance(m, nn.SyncBatchNorm) for m in block.modules()):
        return block(t, impl)
    calls = 0

    def run(tokens: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1  # the forward pass, then the recomputation in backward
        with _frozen_batchnorm_stats(block) if calls > 1 else contextlib.nullcontext():
            return block(tokens, impl)

    selective = {}
    if policy is not None:
        context_fn = functools.partial(create_selective_checkpoint_contexts, policy)
        selective = dict(context_fn=context_fn, **_SAC_HOOKS)
    return torch.utils.checkpoint.checkpoint(run, t, use_reentrant=False, **selective)


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorms normalise with batch statistics but leave their buffers alone: momentum 0
    keeps the running statistics, and with the batch counter ``None`` BatchNorm skips counting.
    No tensor is read or written here: SAC refuses operations the forward did not run
    (``int(counter)``), and switching tracking off would change what autograd saves."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    state = [(m.momentum, m.num_batches_tracked) for m in norms]
    try:
        for m in norms:
            m.momentum, m.num_batches_tracked = 0.0, None
        yield
    finally:
        for m, (momentum, count) in zip(norms, state, strict=True):
            m.momentum, m.num_batches_tracked = momentum, count
