"""ISA's combined maps of many queries at once (:meth:`ISADecoder.main_maps
<isa_explorer.heads.isa.ISADecoder.main_maps>`), the batched form of ``query_maps``.

With ``P = lh * lw`` positions per block and ``G = gh * gw`` blocks (``N = P G`` padded cells),
a query's combined map multiplies its own second-step weights by the first-step weights of
the ``P`` (long-short: its block) or ``G`` (short-long: its long-range group) positions it
passes through. The short step of every position is ``N P`` numbers, computed once; the long
step only for the positions a query needs: the blocks of the queries (long-short, at most
``Q P G = Q N`` numbers) or each query's own row (short-long, ``Q G``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from isa_explorer.heads.batched import segment_matmul

if TYPE_CHECKING:
    from isa_explorer.heads.grid import GroupGrid
    from isa_explorer.heads.isa import ISARecord


def combined_maps(record: ISARecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """``(Q, hp, wp)`` float64 combined maps of the unpadded cells ``(fx, fy)``, ``(Q,)`` each."""
    g, s, n = record.grid, record.scale, len(fx)
    p, groups = g.lh * g.lw, g.gh * g.gw
    py, px = fy + g.pad_top, fx + g.pad_left  # padded coordinates, GroupGrid.locate batched
    block = (py // g.lh) * g.gw + px // g.lw  # (Q,): the query's block (short-range group)
    offset = (py % g.lh) * g.lw + px % g.lw  # (Q,): its offset in it (long-range group)
    short = _short_weights(record)  # (G, P, P): [block, offset, key offset]
    # Maps viewed as (Ck, gh, lh, gw, lw): [.., m, a, n, b] is position (m*lh + a, n*lw + b).
    if record.order == "long-short":
        w2 = short[block, offset]  # (Q, P): the query over its block
        # Long step of the positions (block u, offset a b) over their group (m n).
        blocks, which = torch.unique(block, return_inverse=True)  # (U,), (Q,)
        q1 = _view(record.long_q, g).permute(2, 4, 1, 3, 0).reshape(p, groups, -1)  # (P, G, Ck)
        keys = record.first_keys[0].double().view(p, -1, groups)  # (P, Ck, G)
        w1 = (torch.bmm(q1[:, blocks], keys) * s).softmax(-1)  # (P, U, G)
        combined = w2[:, :, None] * w1[:, which].transpose(0, 1)  # (Q, P, G)
        combined = combined.reshape(n, g.lh, g.lw, g.gh, g.gw).permute(0, 3, 1, 4, 2)
    else:
        # Long step of the query over its group (m n): the group's keys as one block of rows.
        q2 = record.long_q[0].double()[:, py, px].T  # (Q, Ck)
        k2 = _view(record.long_k, g).permute(2, 4, 0, 1, 3).reshape(-1, groups)  # (P * Ck, G)
        w2 = (segment_matmul(q2, offset, k2) * s).softmax(-1)  # (Q, G)
        w1 = short[:, offset].transpose(0, 1)  # (G, Q, P) -> (Q, G, P): the group's blocks
        combined = (w2[:, :, None] * w1).reshape(n, g.gh, g.gw, g.lh, g.lw)
        combined = combined.permute(0, 1, 3, 2, 4)
    return combined.reshape(n, *g.padded)  # (Q, gh, lh, gw, lw) -> (Q, hp, wp)


def _view(t: torch.Tensor, g: GroupGrid) -> torch.Tensor:
    """Image 0 of a record's map ``(B, Ck, hp, wp)`` in float64, as ``(Ck, gh, lh, gw, lw)``."""
    return t[0].double().view(-1, g.gh, g.lh, g.gw, g.lw)


def _short_weights(record: ISARecord) -> torch.Tensor:
    """The short step of every position over its block: ``(G, P, P)`` float64 softmax rows."""
    g = record.grid
    q, k = (_view(t, g).permute(1, 3, 0, 2, 4) for t in (record.short_q, record.short_k))
    # (gh, gw, Ck, lh, lw) each
    q = q.reshape(g.gh * g.gw, -1, g.lh * g.lw).transpose(1, 2)  # (G, P, Ck)
    k = k.reshape(g.gh * g.gw, -1, g.lh * g.lw)  # (G, Ck, P)
    return (torch.bmm(q, k) * record.scale).softmax(-1)
