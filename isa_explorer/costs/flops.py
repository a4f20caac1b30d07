"""FLOP formulas that :mod:`torch.utils.flop_counter` lacks for the kernels SDPA dispatches to.

``F.scaled_dot_product_attention`` picks a kernel per device and build. On the CPU it is
``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward), which the flop
counter of current torch releases has no formula for: it counts those calls as zero FLOPs,
so a fused path would be reported as doing only its projections. The formulas registered here
are torch's own SDPA counts (``sdpa_flop_count``, ``sdpa_backward_flop_count``: the
``Q K^T`` and ``A V`` matmuls, backward 2.5x), the ones it already applies to the CUDA flash,
memory-efficient and cuDNN kernels. An op that torch already counts is left alone, so a
torch release that adds its own formula keeps it.

:func:`count_flops` registers them before it counts (idempotent).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from isa_explorer.costs.analytic import attention_module

__all__ = ["backward", "count_flops", "register_sdpa_formulas"]


def _sdpa_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # (B, heads, L, E) query, (B, heads, S, E) key, (B, heads, S, Ev) value.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_sdpa_formulas() -> list[str]:
    """Register the missing SDPA formulas; returns the names of the ops registered now."""
    done = []
    cpu_flash = "_scaled_dot_product_flash_attention_for_cpu"
    for name, formula in ((cpu_flash, _sdpa_forward), (cpu_flash + "_backward", _sdpa_backward)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry:
            register_flop_formula(op)(formula)
            done.append(str(op))
    return done


def backward(y: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    """``y.backward(grad)`` where ``y`` has a graph. A module whose output needs no gradient
    (EMA's EM runs without autograd, as in mmseg) has no backward: its forward+backward pass
    is its forward in training mode."""
    if not y.requires_grad:
        return
    if grad is None:
        y.sum().backward()  # the gradient of ones
    else:
        y.backward(grad)


def count_flops(
    module: str,
    size: tuple[int, int],
    passes: str = "forward",
    channels: int = 512,
    isa_channels: int = 256,
    group: int | tuple[int, int] = 8,
) -> int:
    """FLOPs of one pass of an attention module counted by ``FlopCounterMode`` on the meta
    device: the same operators on the same shapes, without computing or allocating, so cases
    too large to run are counted too; the counts equal those taken on the CPU (checked in the
    tests)."""
    register_sdpa_formulas()  # the CPU flash kernel counts as the matmuls it replaces
    m = attention_module(module, channels, isa_channels, group).to("meta")
    x = torch.randn(1, channels, *size, device="meta", requires_grad=passes != "forward")
    with FlopCounterMode(display=False) as counter:
        if passes == "forward":
            with torch.no_grad():
                m.eval()(x)
        else:
            backward(m.train()(x))
    return int(counter.get_total_flops())
