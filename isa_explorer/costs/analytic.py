"""Analytic FLOPs and memory of every registered attention head, and its attention step alone.

The formulas are the heads' own (:meth:`~isa_explorer.heads.protocol.Head.cost`): dense
attention's ``N x N`` affinity, ISA's ``Np (Np / P + P)``, any registered head's. The modules
are read from the registry when asked: each head with an attention step
(:meth:`~isa_explorer.heads.protocol.Head.attention_module`) and an analytic cost, once per
implementation it has (:attr:`~isa_explorer.heads.protocol.Head.impls`), named ``HEAD-IMPL``
(``isa-explicit``, ``isa-fused``, ``dense-explicit``, ..., ``cc-explicit``: criss-cross
attention has one implementation).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from isa_explorer import heads
from isa_explorer.heads.protocol import PASSES, HeadConfig

__all__ = ["IMPLS", "PASSES", "analytic_costs", "attention_module", "modules"]

#: The attention implementations, in the order a head's modules are listed (a head measures
#: those of its :attr:`~isa_explorer.heads.protocol.Head.impls`).
IMPLS = ("explicit", "fused")


@functools.cache  # per class: building a small head once tells
def _measurable(cls: type[heads.Head]) -> bool:
    """An attention step to measure and an analytic cost to set beside the measurement."""
    config = HeadConfig(8, 8, attn_impl="explicit")
    return cls.cost(8, 8, config) is not None and cls.attention_module(config) is not None


def modules() -> dict[str, tuple[str, str]]:
    """``{module: (head, impl)}`` of the registered heads with an attention step and an
    analytic cost (:meth:`~isa_explorer.heads.protocol.Head.cost`), now: one module per
    implementation of the head's :attr:`~isa_explorer.heads.protocol.Head.impls`."""
    names = [n for n in heads.names() if _measurable(heads.get(n))]
    return {
        f"{name}-{impl}": (name, impl)
        for name in names
        for impl in IMPLS
        if impl in heads.get(name).impls
    }


def _config(
    channels: int, isa_channels: int, impl: str, group: int | tuple[int, int]
) -> HeadConfig:
    ph, pw = (group, group) if isinstance(group, int) else tuple(group)
    return HeadConfig(channels, isa_channels, attn_impl=impl, down_factor=(ph, pw))


def analytic_costs(
    h: int,
    w: int,
    group: int | tuple[int, int] = 8,
    channels: int = 512,
    isa_channels: int = 256,
    batch: int = 1,
) -> dict[str, dict[str, Any]]:
    """FLOPs and memory of each attention module on an ``h x w`` feature map.

    Args:
        h, w: Feature map size.
        group: Block side of grouping heads (ISA's ``down_factor``), or ``(Ph, Pw)``.
        channels: Channels ``C`` of the values and the block's input/output.
        isa_channels: Query/key channels ``Ck``.
        batch: Batch size.

    Returns:
        ``{module: Cost.as_dict()}`` for every module of :func:`modules`: ``positions``,
        ``group``, ``affinity_elements``, ``affinity_bytes``, ``attention_flops`` (the
        products as run), ``projection_flops``, ``flops`` (``{"forward": ...,
        "forward+backward": ...}``) and ``predicted_peak_bytes`` (same keys).
    """
    out = {}
    for module, (name, impl) in modules().items():
        config = _config(channels, isa_channels, impl, group)
        cost = heads.get(name).cost(h, w, config, impl, batch)
        if cost is not None:
            out[module] = cost.as_dict()
    return out


def attention_module(
    module: str,
    channels: int = 512,
    isa_channels: int = 256,
    group: int | tuple[int, int] = 8,
) -> nn.Module:
    """The attention step of a head alone, ``(B, C, h, w) -> (B, C, h, w)``.

    Args:
        module: A name of :func:`modules` (``isa-fused``, ``dense-explicit``, ...).
        channels: Head channels ``C``.
        isa_channels: Query/key channels.
        group: Block side of grouping heads, or ``(Ph, Pw)``.

    Raises:
        ValueError: An unknown module (the message lists the known ones).
    """
    known = modules()
    if module not in known:
        raise ValueError(f"unknown module {module!r}: choose from {', '.join(known)}")
    name, impl = known[module]
    return heads.get(name).attention_module(_config(channels, isa_channels, impl, group))
