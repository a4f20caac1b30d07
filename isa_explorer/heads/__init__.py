"""Context heads and their registry: the one place the rest of ISA Explorer learns what heads
exist and what they show.

``register`` adds a :class:`~isa_explorer.heads.protocol.Head` subclass under its ``name``;
``get(name)`` returns it, ``of(module)`` the registered class of a model's decoder (or of a
head). The built-in heads (``isa``, ``dense``, ``fcn``; mmseg's context heads ``nl``, ``cc``,
``da``, ``gc``, ``ema``) register on import. See
``docs/architecture.md`` ("Adding a head") for the steps of adding one.
"""

from __future__ import annotations

from isa_explorer.heads.protocol import (
    Cost,
    Head,
    HeadConfig,
    MapInfo,
    MmsegNames,
    Record,
    ValueInfo,
)
from isa_explorer.heads.registry import get, names, of, register, unregister, with_attention

# isort: off
from isa_explorer.heads import isa, dense, fcn  # noqa: E402, F401  (registered in this order)
from isa_explorer.heads import nl, cc, da, gc, ema  # noqa: E402, F401  (mmseg's context heads)
# isort: on

__all__ = [
    "Cost",
    "Head",
    "HeadConfig",
    "MapInfo",
    "MmsegNames",
    "Record",
    "ValueInfo",
    "get",
    "names",
    "of",
    "register",
    "unregister",
    "with_attention",
]
