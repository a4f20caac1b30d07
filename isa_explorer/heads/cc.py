"""Criss-cross attention (Huang et al., CCNet, arXiv 1811.11721), as mmseg's ``CCHead``.

One criss-cross pass lets position ``p = (h, w)`` attend to the ``H + W - 1`` positions of its
row and column. With 1x1 convolutions ``q``, ``k`` (``C / 8`` channels, with bias) and ``v``
(``C`` channels) of the input ``x``, and no affinity scaling::

    e_col[p, i] = q_p . k_(i, w)   (i != h; the query itself is masked with -inf)
    e_row[p, j] = q_p . k_(h, j)   (the query itself included once, here)
    a_p = softmax([e_col[p], e_row[p]])                      # over H + W entries
    out_p = gamma * (sum_i a_p[i] v_(i, w) + sum_j a_p[H + j] v_(h, j)) + x_p

mmcv 2.1's ``CrissCrossAttention`` (``mmcv/ops/cc_attention.py``, pure PyTorch) masks the
column part's diagonal with ``-inf``; here the same mask comes from an ``arange`` comparison
(``masked_fill``), which exports with symbolic ``H``. mmseg's ``CCHead`` is an ``FCNHead``
(two 3x3 convs, input concat) that runs the same block ``recurrence`` times (2) between its
first and second conv, each pass on the previous pass's output: after two passes every
position has a path to every other one.

The *combined* map of a query ``p`` is the two-pass affinity ``C[p, k] = sum_j A2[p, j]
A1[j, k]`` (``j`` in ``p``'s cross, ``k`` in ``j``'s cross): it reaches every cell and sums to
one. Like ISA's combined map it ignores the residual path (``gamma * attn_out + x``) and the
``gamma`` scale. :meth:`CCHead.query_maps` computes it in ``O((H + W)^2 + N)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from isa_explorer.heads.batched import segment_matmul
from isa_explorer.heads.fcn import FCNHead
from isa_explorer.heads.protocol import (
    BYTES,
    Cost,
    HeadConfig,
    MapInfo,
    MmsegNames,
    Record,
    context_cost,
    peak_bytes,
)
from isa_explorer.heads.registry import register
from isa_explorer.models.layers import Scale

#: Peak memory of :meth:`CCHead.cost` per pass: ``(a, f)``, ``a`` ``N x C`` activations plus
#: ``f`` times the affinities of all passes, fitted to fresh-process CPU peaks
#: (:mod:`isa_explorer.costs.measure`) of the passes alone with ``C = 512`` at 32x64, 64x128 and
#: 128x256 positions, rounded up to cover the two larger (a few MiB of fixed workspace, not
#: modelled, exceed it at the smallest).
PEAK = {"forward": (7, 0.5), "forward+backward": (12, 1)}


class CrissCrossAttention(nn.Module):
    """One criss-cross pass (mmcv's ``CrissCrossAttention``): ``(B, C, H, W)`` to the same.

    Args:
        in_channels: Channels ``C``; queries and keys have ``C // 8``.
    """

    def __init__(self, in_channels: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)

    def forward(
        self, x: torch.Tensor, return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (B, C, H, W)`` -> ``gamma * attention + x`` (and the detached ``q``, ``k``
        maps ``(B, C / 8, H, W)`` when ``return_qk``)."""
        h = x.shape[2]
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        e_col = torch.einsum("bchw,bciw->bhwi", q, k)  # (B, H, W, H): column (i, w)
        rows = torch.arange(h, device=x.device)
        own = rows[:, None, None] == rows  # (H, 1, H): i == h, the query in its column
        e_col = e_col.masked_fill(own, float("-inf"))
        e_row = torch.einsum("bchw,bchj->bhwj", q, k)  # (B, H, W, W): row (h, j)
        attn = F.softmax(torch.cat([e_col, e_row], dim=-1), dim=-1)  # (B, H, W, H + W)
        del e_col, e_row  # not kept for backward: freed before the aggregation's maps exist
        out = torch.einsum("bciw,bhwi->bchw", v, attn[..., :h])
        out += torch.einsum("bchj,bhwj->bchw", v, attn[..., h:])  # in place: no third map
        out = self.gamma(out) + x
        return (out, q.detach(), k.detach()) if return_qk else out


def criss_cross_passes(
    cca: CrissCrossAttention, y: torch.Tensor, recurrence: int, return_qk: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``cca`` run ``recurrence`` times on ``y (B, C, H, W)``, each pass on the last's output.

    Returns:
        The output ``(B, C, H, W)`` and, when ``return_qk``, each pass's queries and keys
        ``(B, C / 8, H, W)`` (empty lists otherwise).
    """
    qs, ks = [], []
    for _ in range(recurrence):
        if return_qk:
            y, q, k = cca(y, return_qk=True)
            qs.append(q)
            ks.append(k)
        else:
            y = cca(y)
    return y, qs, ks


class CrissCrossPasses(nn.Module):
    """The head's attention step alone: ``recurrence`` passes of one ``cca`` block.

    Args:
        channels: Channels ``C`` of the map.
        recurrence: Number of passes (2).
    """

    def __init__(self, channels: int, recurrence: int = 2):
        super().__init__()
        self.cca = CrissCrossAttention(channels)
        self.recurrence = recurrence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return criss_cross_passes(self.cca, x, self.recurrence)[0]


@dataclass
class CCRecord(Record):
    """Queries and keys of every pass (pass ``r + 1`` reads pass ``r``'s output).

    Attributes:
        q, k: ``(B, recurrence, C / 8, h, w)``.
    """

    q: torch.Tensor
    k: torch.Tensor


@register
class CCHead(FCNHead):
    """mmseg's ``CCHead``: ``FCNHead(num_convs=2, concat_input=True)`` with ``recurrence``
    criss-cross passes after its first conv.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        recurrence: Criss-cross passes, sharing one block's weights (2).
        dropout: Dropout before the classifier (0.1).
    """

    name = "cc"
    maps = (
        MapInfo("first", "First pass", "the query's row and column", "first"),
        MapInfo(
            "second", "Second pass", "the query's row and column, on pass 1's output", "second"
        ),
        MapInfo(
            "combined", "Combined", "both passes composed: every cell (residual, gamma ignored)"
        ),
    )
    main_map = "combined"
    mmseg = MmsegNames("CCHead", ("convs", "conv_cat", "cca", "conv_seg"))
    impls = ("explicit",)

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        recurrence: int = 2,
        dropout: float = 0.1,
    ):
        if recurrence < 2:
            raise ValueError(
                f"recurrence must be at least 2 (got {recurrence}): the head's maps show two "
                "passes, and with one a position cannot reach the whole map"
            )
        super().__init__(in_channels, classes, channels, 2, True, dropout)
        self.cca = CrissCrossAttention(channels)
        self.recurrence = recurrence

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> CCHead:
        """From ``config.channels``, ``config.dropout`` and ``config.options`` (``recurrence``)."""
        return cls(in_channels, classes, config.channels, dropout=config.dropout, **config.options)

    def context(
        self, y: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, CCRecord | None]:
        """``recurrence`` criss-cross passes on ``y (B, C, H, W)``."""
        y, qs, ks = criss_cross_passes(self.cca, y, self.recurrence, return_attention)
        if not return_attention:
            return y, None
        size = (y.shape[2], y.shape[3])
        return y, CCRecord(size, torch.stack(qs, 1), torch.stack(ks, 1))  # (B, R, C/8, h, w)

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module:
        return CrissCrossPasses(config.channels, config.options.get("recurrence", 2))

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """``R = recurrence`` criss-cross passes on ``N = h * w`` positions, ``C8 = C / 8``:

        * affinities: ``R N (h + w)``, each pass's ``(B, h, w, h + w)`` softmax: the ``h + w - 1``
          cells of a position's cross, the position itself twice (its column entry masked);
        * attention: per pass, energies ``2 N (h + w) C8`` and aggregation ``2 N (h + w) C``
          FLOPs; backward twice that;
        * projections: per pass, ``q``, ``k`` (``C -> C8``) and ``v`` (``C -> C``),
          ``2 C (2 C8 + C)`` FLOPs per position.

        One implementation (:attr:`impls`): the affinities are always built, as mmcv does.
        Peak memory: :data:`PEAK` (calibrated on the CPU).
        """
        n, c, r = batch * h * w, config.channels, config.options.get("recurrence", 2)
        pairs = r * n * (h + w)
        attn = 2 * pairs * (c // 8 + c)
        proj = r * n * 2 * c * (2 * (c // 8) + c)
        peak = peak_bytes(n * c * BYTES, pairs * BYTES, PEAK)
        return context_cost(n, pairs, (attn, 2 * attn), proj, peak)

    # -- what a query sees ----------------------------------------------------------------------

    @classmethod
    def query_maps(cls, record: CCRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``first``, ``second`` and ``combined`` maps of cell ``(fx, fy)``, float64 ``(h, w)``.

        ``first``/``second``: the pass's weights on the query's row and column (the column
        part at the query itself is 0, the row part holds it). ``combined``: all passes
        composed, ``A_R ... A_1`` restricted to the query's row (``A2 @ A1`` for the default
        two passes), without the residual path and ``gamma``. Two passes cost ``O((H + W)^2
        C/8 + N)``: only the ``H + W - 1`` positions of the query's cross take a first-pass
        softmax. Each further pass spreads a dense map, a row at a time.
        """
        q, k = record.q[0].double(), record.k[0].double()  # (R, Ck, h, w)
        one = torch.ones(1, 1, dtype=torch.float64)
        at_query = (torch.tensor([fy]), torch.tensor([fx]))
        passes = [_spread(one, q[r], k[r], *at_query) for r in range(q.shape[0])]
        combined = _through_cross(passes[-1], q[-2], k[-2], fx, fy)
        for r in range(q.shape[0] - 3, -1, -1):  # passes before the last two (recurrence > 2)
            combined = _through_all(combined, q[r], k[r])
        return {"first": passes[0], "second": passes[1], "combined": combined}

    @classmethod
    def main_maps(cls, record: CCRecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The ``combined`` maps of ``Q`` cells at once, ``A2 @ A1`` restricted to their rows.

        The first pass's criss-cross softmax of every position (``N (H + W)`` numbers) is
        computed once; a query's map sums, over the cells ``m`` of its cross, ``A2[p, m]``
        times ``m``'s row of it. ``O(Q N + N (H + W))`` memory. A head of more than two passes
        (``recurrence > 2``) takes the base class's loop over :meth:`query_maps`.

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, row ``i`` equal to
            ``query_maps(record, fx[i], fy[i])["combined"]``.
        """
        if record.q.shape[1] != 2:
            return super().main_maps(record, fx, fy)
        q, k = record.q[0].double(), record.k[0].double()  # (2, Ck, h, w)
        ck, h, w = q.shape[1:]
        rows, n = torch.arange(h), len(fx)
        # First pass, every position (y, x): weights over its column i and its row j.
        e_col = torch.einsum("chw,ciw->hwi", q[0], k[0])  # (h, w, h)
        e_col = e_col.masked_fill(rows[:, None, None] == rows, float("-inf"))
        e_row = torch.einsum("chw,chj->hwj", q[0], k[0])  # (h, w, w)
        a1 = torch.cat([e_col, e_row], dim=-1).softmax(-1)  # (h, w, h + w)
        a1_col, a1_row = a1[..., :h], a1[..., h:]  # (h, w, h), (h, w, w)
        # Second pass, the queries only: keys of each column (row) as one block of rows.
        qp = q[1][:, fy, fx].T  # (Q, Ck)
        k_cols = k[1].permute(2, 0, 1).reshape(w * ck, h)  # (w, Ck, h) -> (w * Ck, h)
        k_rows = k[1].permute(1, 0, 2).reshape(h * ck, w)  # (h, Ck, w) -> (h * Ck, w)
        e_col2 = segment_matmul(qp, fx, k_cols)  # (Q, h)
        e_col2 = e_col2.masked_fill(rows == fy[:, None], float("-inf"))
        a2 = torch.cat([e_col2, segment_matmul(qp, fy, k_rows)], dim=-1).softmax(-1)
        col, row = a2[:, :h], a2[:, h:]  # (Q, h): 0 at the query; (Q, w): holds the query
        # Cells (fy, j) of the query's row pass on their column part (i, j) ...
        out = a1_col[fy].transpose(1, 2) * row[:, None, :]  # (Q, w, h) -> (Q, h, w)
        # ... cells (i, fx) of its column their row part (i, j') ...
        out += a1_row[:, fx].transpose(0, 1) * col[:, :, None]  # (h, Q, w) -> (Q, h, w)
        # ... and both sum into the query's own row and column.
        at = torch.arange(n)
        out[at, fy] += segment_matmul(row, fy, a1_row.reshape(h * w, w))  # (Q, w)
        cols_first = a1_col.transpose(0, 1).reshape(w * h, h)  # (w, h, h) -> (w * h, h)
        out[at, :, fx] += segment_matmul(col, fx, cols_first)  # (Q, h)
        return out

    @classmethod
    def reach(cls, record: CCRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``first`` and ``second``: the query's row and column."""
        cross = torch.zeros(record.size, dtype=torch.bool)
        cross[fy, :] = True
        cross[:, fx] = True
        return {"first": cross, "second": cross.clone()}

    @classmethod
    def mmseg_config(cls, state: dict[str, torch.Tensor]) -> dict[str, int]:
        """``decoder_channels`` from the block's value conv (``recurrence`` has no weights)."""
        return {"decoder_channels": state["decode_head.cca.value_conv.weight"].shape[0]}


def _spread(
    weights: torch.Tensor, q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``sum_j weights[j] A[j]`` over the positions ``j`` of ``rows x cols``, as an ``(h, w)``
    map, where ``A[j]`` is ``j``'s criss-cross softmax from ``q``, ``k (Ck, h, w)``.

    Args:
        weights: ``(len(rows), len(cols))``.
        q, k: One pass's queries and keys ``(Ck, h, w)``.
        rows, cols: Row and column indices (int64, no repeats).
    """
    h = q.shape[1]
    qs = q[:, rows][:, :, cols]  # (Ck, r, c)
    e_col = torch.einsum("cab,cib->abi", qs, k[:, :, cols])  # (r, c, H)
    e_col = e_col.masked_fill((rows[:, None] == torch.arange(h))[:, None], float("-inf"))
    e_row = torch.einsum("cab,caj->abj", qs, k[:, rows])  # (r, c, W)
    a = torch.cat([e_col, e_row], dim=-1).softmax(-1)  # (r, c, H + W)
    out = torch.zeros(q.shape[1:], dtype=q.dtype)
    out[:, cols] += torch.einsum("ab,abi->ib", weights, a[..., :h])
    out[rows] += torch.einsum("ab,abj->aj", weights, a[..., h:])
    return out


def _through_cross(
    m: torch.Tensor, q: torch.Tensor, k: torch.Tensor, fx: int, fy: int
) -> torch.Tensor:
    """``m @ A`` for a map ``m (h, w)`` that lives on the cross of ``(fx, fy)``: its row, then
    its column without the query (counted once, in the row)."""
    h, w = m.shape
    row, col = torch.tensor([fy]), torch.tensor([fx])
    others = torch.cat([torch.arange(fy), torch.arange(fy + 1, h)])  # the column's other rows
    along_row = _spread(m[fy][None], q, k, row, torch.arange(w))
    return along_row + _spread(m[others, fx][:, None], q, k, others, col)


def _through_all(m: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``m @ A`` for a dense map ``m (h, w)``, a row at a time (``O(w (h + w))`` memory)."""
    h, w = m.shape
    cols = torch.arange(w)
    return sum(_spread(m[i][None], q, k, torch.tensor([i]), cols) for i in range(h))
