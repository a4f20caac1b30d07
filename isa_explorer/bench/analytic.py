"""Analytic FLOPs and memory of dense and interlaced sparse self-attention.

For ``N`` positions, ``C`` channels, ``Ck`` query/key channels and groups of ``P = Ph * Pw``:

* dense attention builds an ``N x N`` affinity: ``N^2`` elements, ``2 N^2 (Ck + C)`` FLOPs for
  ``Q K^T`` and ``A V``;
* ISA pads the map to a multiple of the group (``Np`` positions) and builds the affinities of
  the long-range step (``P`` sequences of ``Np / P``) and the short-range step (``Np / P``
  sequences of ``P``): ``Np (Np / P + P)`` elements, ``2 Np (Np / P + P)(Ck + C)`` FLOPs;
* every relation block also projects each position: queries and keys (two 1x1 layers each),
  values and the output, ``2 (2 (C Ck + Ck^2) + 2 C^2)`` FLOPs per position (ISA has two blocks).

The fused path (``scaled_dot_product_attention``) runs the 512-d values as two 256-d heads that
share queries and keys, so it computes ``Q K^T`` ``C / Ck`` times; its FLOPs are counted as run.
A backward pass costs twice the forward's matmuls (``3x`` in all; the fused kernel's backward
is counted as ``2.5x`` its forward, as :mod:`torch.utils.flop_counter` does).
"""

from __future__ import annotations

import math
from typing import Any

#: The attention modules the benchmark measures: (kind, implementation).
MODULES: dict[str, tuple[str, str]] = {
    "isa-explicit": ("isa", "explicit"),
    "isa-fused": ("isa", "fused"),
    "dense-explicit": ("dense", "explicit"),
    "dense-fused": ("dense", "fused"),
}
PASSES = ("forward", "forward+backward")
BYTES = 4  # float32
# Peak-memory model, used to predict (and skip) cases that will not fit: activations of
# ``N x C`` floats alive at the peak, plus affinities alive at the peak (as multiples of the
# affinity bytes above). Calibrated on CPU measurements, rounded up.
_ACTIVATIONS = {"forward": 7, "forward+backward": 22}
_AFFINITIES = {("explicit", "forward"): 2, ("explicit", "forward+backward"): 3}


def auto_group(h: int, w: int) -> int:
    """Square group side ``s`` minimising the ISA affinity ``Np (Np / s^2 + s^2)`` of ``h x w``.

    Without padding the optimum is ``s^2 = sqrt(N)``; padding to a multiple of ``s`` is counted.
    """
    best = min(range(1, max(h, w) + 1), key=lambda s: (_isa_elements(h, w, s, s), s))
    return best


def _padded(h: int, w: int, ph: int, pw: int) -> int:
    return math.ceil(h / ph) * ph * math.ceil(w / pw) * pw


def _isa_elements(h: int, w: int, ph: int, pw: int) -> int:
    n, p = _padded(h, w, ph, pw), ph * pw
    return n * (n // p + p)


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
        group: ISA group (``down_factor``) side, or ``(Ph, Pw)``.
        channels: Channels ``C`` of the values and the block's input/output.
        isa_channels: Query/key channels ``Ck``.
        batch: Batch size.

    Returns:
        ``{module: {...}}`` for every module in :data:`MODULES`, each with ``positions``,
        ``affinity_elements``, ``affinity_bytes``, ``attention_flops`` (the ``Q K^T`` and
        ``A V`` matmuls as run), ``projection_flops``, ``flops`` (``{"forward": ...,
        "forward+backward": ...}``) and ``predicted_peak_bytes`` (same keys).
    """
    ph, pw = (group, group) if isinstance(group, int) else group
    c, ck = channels, isa_channels
    heads = c // ck if c % ck == 0 else 1  # the fused path's value split
    proj_per_pos = 2 * (2 * (c * ck + ck * ck) + 2 * c * c)
    out = {}
    for name, (kind, impl) in MODULES.items():
        if kind == "dense":
            n = h * w
            pairs = n * n  # affinity elements
            blocks = 1
        else:
            n = _padded(h, w, ph, pw)
            pairs = _isa_elements(h, w, ph, pw)
            blocks = 2
        pairs *= batch
        qk = ck * (heads if impl == "fused" else 1)
        attn_flops = 2 * pairs * (qk + c)
        proj_flops = blocks * batch * n * proj_per_pos
        bwd_attn = 2.5 if impl == "fused" else 2.0
        flops = {
            "forward": attn_flops + proj_flops,
            "forward+backward": int(3 * proj_flops + (1 + bwd_attn) * attn_flops),
        }
        act = batch * n * c * BYTES
        peak = {
            p: _ACTIVATIONS[p] * act + _AFFINITIES.get((impl, p), 0) * pairs * BYTES for p in PASSES
        }
        out[name] = {
            "positions": batch * n,
            "group": [ph, pw] if kind == "isa" else None,
            "affinity_elements": pairs,
            "affinity_bytes": pairs * BYTES,
            "attention_flops": attn_flops,
            "projection_flops": proj_flops,
            "flops": flops,
            "predicted_peak_bytes": peak,
        }
    return out
