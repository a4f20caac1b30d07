"""Interlaced Sparse Self-Attention (Huang et al., arXiv 1907.12273), as mmseg's ``ISAHead``.

A feature map of ``h x w`` positions is cut into ``gh x gw`` local blocks of ``lh x lw``
(``down_factor``, 8 x 8 by default; the map is zero-padded symmetrically to a multiple of it,
:class:`~isa_explorer.heads.grid.GroupGrid`). Writing a row index as ``i = gi * lh + li``
(block ``gi``, offset ``li``):

* long-range step (``global_relation``): positions that share an offset ``(li, lj)`` attend to
  each other -- ``lh * lw`` sequences of ``gh * gw`` positions, each ``lh`` rows apart;
* short-range step (``local_relation``): positions of one block attend to each other --
  ``gh * gw`` sequences of ``lh * lw`` positions.

For the paper's order (long, then short) the output at query ``p`` is, up to the value and
output projections, ``sum_j S[p, j] * sum_k L[j, k] v_k`` with ``j`` in ``p``'s block and ``k``
in ``j``'s long-range group. The *combined* map is the product of the two sparse affinities,
``C[p, k] = sum_j S[p, j] L[j, k]``. ``p``'s block holds exactly one position of every
long-range group, so exactly one ``j`` contributes to each ``k``: ``C[p, k] = S[p, j(k)] *
L[j(k), k] > 0`` -- every position reaches every other one, and ``C[p]`` sums to one over the
padded grid. :meth:`ISADecoder.query_maps` computes the three maps of one query in ``O(N)``.

Memory at inference (chunks of sequences) lives in :mod:`isa_explorer.heads.isa_stream`; the
export-friendly formulation of the grid in :mod:`isa_explorer.heads.grid`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from isa_explorer.heads.grid import GroupGrid
from isa_explorer.heads.grid_export import grid_for
from isa_explorer.heads.isa_maps import combined_maps
from isa_explorer.heads.isa_stream import QK, streamed
from isa_explorer.heads.protocol import Cost, HeadConfig, MapInfo, MmsegNames, Record, relation_cost
from isa_explorer.heads.registry import register
from isa_explorer.heads.shell import ContextHead
from isa_explorer.models.checkpointing import checkpointed, keep_products
from isa_explorer.models.layers import AttnImpl, RelationBlock

Order = Literal["long-short", "short-long"]


@dataclass
class ISARecord(Record):
    """Queries and keys of both ISA steps, as padded maps ``(B, Ck, hp, wp)``.

    Attributes:
        grid: The grouping geometry.
        order: ``"long-short"`` or ``"short-long"``.
        scale: Affinity scale ``Ck ** -0.5``.
        long_q, long_k, short_q, short_k: The steps' queries and keys.
        first_keys: The first step's keys grouped the way one query's block (or group) meets
            them, contiguous, so a query costs one batched product instead of a strided copy
            of all keys: long-short ``(B, lh, lw, Ck, gh*gw)``, short-long
            ``(B, gh, gw, Ck, lh*lw)``. Made with the record.
    """

    grid: GroupGrid
    order: str
    scale: float
    long_q: torch.Tensor
    long_k: torch.Tensor
    short_q: torch.Tensor
    short_k: torch.Tensor
    first_keys: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g, first = self.grid, self.order.split("-")[0]
        k = getattr(self, f"{first}_k")
        b, ck = k.shape[:2]
        kv = k.reshape(b, ck, g.gh, g.lh, g.gw, g.lw)  # [., c, m, a, n, b]: (m*lh+a, n*lw+b)
        if first == "long":  # per block offset (a, b): its long-range group (m, n)
            kv = kv.permute(0, 3, 5, 1, 2, 4).reshape(b, g.lh, g.lw, ck, g.gh * g.gw)
        else:  # per block (m, n): its positions (a, b)
            kv = kv.permute(0, 2, 4, 1, 3, 5).reshape(b, g.gh, g.gw, ck, g.lh * g.lw)
        self.first_keys = kv.contiguous()

    @property
    def padded(self) -> tuple[int, int]:
        return self.grid.padded

    @property
    def offset(self) -> tuple[int, int]:
        return self.grid.pad_top, self.grid.pad_left

    def block_edges(self) -> tuple[list[int], list[int]]:
        return self.grid.block_edges()


def isa_context(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    impl: AttnImpl,
    return_attention: bool = False,
    checkpoint: Literal["full", "selective"] | None = None,
    token_budget: int | None = None,
) -> tuple[torch.Tensor, QK | None]:
    """Both ISA steps: pad, group into sequences, attend, regroup, attend, crop.

    With autograd (training, gradients) the whole map runs at once. At inference of the fused
    path (no autograd, eval mode, concrete sizes) the same blocks run a chunk of sequences at
    a time, with the same numbers (:mod:`~isa_explorer.heads.isa_stream`).

    Args:
        steps: ``((first, block), (second, block))``, e.g. ``(("long", global_relation),
            ("short", local_relation))``; relation blocks, called as
            ``block(tokens, impl, return_qk=...)``.
        residual: Output of ``in_conv``, ``(B, C, H, W)``.
        grid: The :class:`GroupGrid` of ``(H, W)``.
        impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention.
        return_attention: Also return the queries and keys.
        checkpoint: Run each block under activation checkpointing
            (:func:`~isa_explorer.models.checkpointing.checkpointed`), ``"full"`` or
            ``"selective"`` (:func:`~isa_explorer.models.checkpointing.keep_products`); not
            with ``return_attention``.
        token_budget: Positions per chunk when streamed (``None``: the device's default,
            :mod:`~isa_explorer.heads.isa_stream`).

    Returns:
        The context ``(B, C, H, W)`` and, when asked, ``{"{step}_q": ..., "{step}_k": ...}``,
        padded maps ``(B, Ck, hp, wp)`` for ``step`` in long/short.
    """
    chunked = (
        impl != "explicit"
        and not torch.is_grad_enabled()
        and not grid.symbolic
        and not torch.compiler.is_compiling()
        and not any(m.training for _, block in steps for m in block.modules())
    )
    if chunked:
        return streamed(steps, residual, grid, token_budget, return_attention)
    first, second = steps[0][0], steps[1][0]
    t = grid.to_tokens(grid.pad(residual), first)  # (B * groups, L, C)
    attn: QK | None = {} if return_attention else None
    for i, (step, block) in enumerate(steps):
        if i:
            t = grid.swap(t, first)  # tokens of the second step
        if attn is None:
            if checkpoint is None:
                t = block(t, impl)
            else:
                policy = keep_products if checkpoint == "selective" else None
                t = checkpointed(block, t, impl, policy)
            continue
        t, q, k = block(t, impl, return_qk=True)
        attn[f"{step}_q"], attn[f"{step}_k"] = grid.to_map(q, step), grid.to_map(k, step)
    return grid.crop(grid.to_map(t, second)), attn  # (B, C, H, W)


@register
class ISADecoder(ContextHead):
    """ISA head: ``in_conv`` -> long-range -> short-range -> ``out_conv`` -> classifier.

    ``return_attention=True`` returns an :class:`ISARecord`.

    Args:
        in_channels: Channels of the encoder's last stage (2048 for ResNet-50).
        classes: Number of output classes.
        channels: Channels of the head (512 in the published models).
        isa_channels: Channels of queries and keys (256).
        down_factor: Local block size ``(lh, lw)`` (8, 8).
        order: ``"long-short"`` (the paper's) or ``"short-long"`` (ablation).
        dropout: Dropout before the classifier (0.1).
        attn_impl: ``"fused"`` (scaled_dot_product_attention), ``"explicit"``, or ``"auto"``
            (per call, by measurement: :func:`~isa_explorer.models.layers.choose_impl`).

    Attributes (not weights or config: not saved with the model):
        checkpoint_relations: Full activation checkpointing of the two relation blocks in
            training (``set_full_checkpoint``; ``train/fit.py --set checkpoint_attention=true``):
            only their inputs are kept for backward, the least memory for a second forward.
        selective_checkpoint: Otherwise (``True``), training keeps the outputs of the blocks'
            matrix products and attention kernels and recomputes ReLUs, BatchNorm's
            normalisation and layout copies in backward: less memory in about a plain step's
            time (:func:`~isa_explorer.models.checkpointing.keep_products`; not with
            ``return_attention``, under ``torch.compile`` or with SyncBatchNorm).
        token_budget: Positions per chunk at inference (``None``: the device's default,
            :mod:`~isa_explorer.heads.isa_stream`).

    Shapes:
        ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits at feature resolution.
    """

    name = "isa"
    maps = (
        MapInfo("long", "Long-range", "same offset in every 8x8 block", "long"),
        MapInfo("short", "Short-range", "inside the query's block", "short"),
        MapInfo("combined", "Combined", "long then short"),
    )
    main_map = "combined"
    mmseg = MmsegNames(
        "ISAHead", ("in_conv", "global_relation", "local_relation", "out_conv", "conv_seg")
    )

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        isa_channels: int = 256,
        down_factor: tuple[int, int] = (8, 8),
        order: Order = "long-short",
        dropout: float = 0.1,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__(in_channels, classes, channels, dropout, attn_impl)
        if order not in ("long-short", "short-long"):
            raise ValueError(f"order must be 'long-short' or 'short-long', got {order!r}")
        self.down_factor = (int(down_factor[0]), int(down_factor[1]))
        self.order = order
        self.global_relation = RelationBlock(channels, isa_channels)
        self.local_relation = RelationBlock(channels, isa_channels)
        self.checkpoint_relations = False
        self.selective_checkpoint = True
        self.token_budget: int | None = None

    @property
    def steps(self) -> tuple[tuple[str, RelationBlock], tuple[str, RelationBlock]]:
        """The two attention steps in the order they run: ``(("long", block), ("short", block))``."""
        long_, short_ = ("long", self.global_relation), ("short", self.local_relation)
        return (long_, short_) if self.order == "long-short" else (short_, long_)

    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, ISARecord | None]:
        """Run ``in_conv`` and both attention steps.

        Returns:
            ``(context, residual, attention)``: the first two ``(B, channels, H, W)``, the
            last as documented by the class (``None`` unless ``return_attention``).
        """
        residual = self.in_conv(x)  # (B, C, H, W)
        grid = grid_for(*residual.shape[-2:], self.down_factor)
        checkpoint = None
        if self.training and torch.is_grad_enabled() and not return_attention:
            if self.checkpoint_relations:
                checkpoint = "full"
            elif self.selective_checkpoint and not torch.compiler.is_compiling():
                checkpoint = "selective"  # compiled: the partitioner picks what to recompute
        context, qk = isa_context(
            self.steps,
            residual,
            grid,
            self.attn_impl,
            return_attention,
            checkpoint,
            self.token_budget,
        )
        if qk is None:
            return context, residual, None
        qk = {k: v.detach() for k, v in qk.items()}
        scale = self.global_relation.scale
        return context, residual, ISARecord((grid.h, grid.w), grid, self.order, scale, **qk)

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> ISADecoder:
        c = config
        args = (c.channels, c.key_channels, c.down_factor, c.order, c.dropout, c.attn_impl)
        return cls(in_channels, classes, *args)

    def set_full_checkpoint(self, on: bool) -> None:
        self.checkpoint_relations = bool(on)

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module:
        """Both steps alone; in training they run as the algorithm does, without the
        selective checkpointing (whose recomputation would add the explicit path's products
        to backward)."""
        step = super().attention_module(config)
        step.head.selective_checkpoint = False
        return step

    # -- what a query sees ----------------------------------------------------------------------

    @classmethod
    def query_maps(cls, record: ISARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``long``, ``short`` and ``combined`` maps of cell ``(fx, fy)`` on the padded grid.

        Memory and time are ``O(N * Ck)``: one query against the keys it meets, and the
        first step of each position of its block (or group), never the ``N x N`` affinity.
        Products in float64, so :meth:`main_maps` (batched) equals it to float64 rounding.
        """
        g = record.grid
        bi, bj, li, lj = g.locate(fx, fy)  # the query's block and its offset in it
        py, px = bi * g.lh + li, bj * g.lw + lj  # padded coordinates of the query
        first, second = record.order.split("-")
        q1 = getattr(record, f"{first}_q")[0]  # (Ck, hp, wp); the first keys come grouped
        q2, k2 = getattr(record, f"{second}_q")[0], getattr(record, f"{second}_k")[0]
        ck, s = q1.shape[0], record.scale
        # Viewed as (Ck, gh, lh, gw, lw): [.., m, a, n, b] is position (m*lh + a, n*lw + b).
        k2v, q1v = (t.view(ck, g.gh, g.lh, g.gw, g.lw) for t in (k2, q1))
        qp = q2[:, py, px].double()  # (Ck,): the query
        if first == "long":
            # Second step (short): p's weights over its block (a, b).
            w2 = _softmax(torch.einsum("c,cab->ab", qp, k2v[:, bi, :, bj, :].double()) * s)
            # First step (long) for every j = (bi, a, bj, b) of p's block over its group (m, n).
            qb = q1v[:, bi, :, bj, :].permute(1, 2, 0).reshape(g.lh * g.lw, 1, ck).double()
            kg = record.first_keys[0].view(g.lh * g.lw, ck, g.gh * g.gw).double()
            w1 = _softmax(torch.bmm(qb, kg).view(g.lh, g.lw, g.gh, g.gw) * s)  # (lh, lw, gh, gw)
            combined = (w2[:, :, None, None] * w1).permute(2, 0, 3, 1)  # (gh, lh, gw, lw)
            long_w, short_w = w1[li, lj], w2  # p's own weights: (gh, gw), (lh, lw)
        else:
            # Second step (long): p's weights over its long-range group (m, n).
            w2 = _softmax(torch.einsum("c,cmn->mn", qp, k2v[:, :, li, :, lj].double()) * s)
            # First step (short) for every j = (m, li, n, lj) of p's group over its block (a, b).
            qg = q1v[:, :, li, :, lj].permute(1, 2, 0).reshape(g.gh * g.gw, 1, ck).double()
            kg = record.first_keys[0].view(g.gh * g.gw, ck, g.lh * g.lw).double()
            w1 = _softmax(torch.bmm(qg, kg).view(g.gh, g.gw, g.lh, g.lw) * s)  # (gh, gw, lh, lw)
            combined = (w2[:, :, None, None] * w1).permute(0, 2, 1, 3)  # (gh, lh, gw, lw)
            long_w, short_w = w2, w1[bi, bj]
        long_map = torch.zeros(g.gh, g.lh, g.gw, g.lw, dtype=long_w.dtype)
        long_map[:, li, :, lj] = long_w
        short_map = torch.zeros_like(long_map)
        short_map[bi, :, bj, :] = short_w
        maps = {"long": long_map, "short": short_map, "combined": combined}
        return {k: v.reshape(g.padded) for k, v in maps.items()}

    @classmethod
    def main_maps(cls, record: ISARecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The ``combined`` maps of ``Q`` cells at once, ``(Q, hp, wp)`` float64, row ``i``
        equal to ``query_maps(record, fx[i], fy[i])["combined"]``; both orders, padding.

        The short step of every position is computed once; the long step for the queries'
        blocks only (long-short) or each query's own (short-long): ``O(Q N)`` memory
        (:func:`~isa_explorer.heads.isa_maps.combined_maps`).
        """
        return combined_maps(record, fx, fy)

    @classmethod
    def reach(cls, record: ISARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``long``: the query's long-range group; ``short``: its block (unpadded cells); in
        the order the steps run (``record.order``)."""
        g = record.grid
        bi, bj, li, lj = g.locate(fx, fy)
        long_, short_ = torch.zeros(2, g.h, g.w, dtype=torch.bool)
        rows, cols = g.group_cells(li, lj)
        long_[rows.start :: rows.step, cols.start :: cols.step] = True
        r0, c0, r1, c1 = g.block_bounds(bi, bj)
        short_[r0:r1, c0:c1] = True
        return {step: {"long": long_, "short": short_}[step] for step in record.order.split("-")}

    # -- cost and names --------------------------------------------------------------------------

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """Padded to ``Np`` positions: the long step's ``P = lh * lw`` sequences of ``Np / P``
        and the short step's ``Np / P`` sequences of ``P``, ``Np (Np / P + P)`` affinities."""
        ph, pw = config.down_factor
        n = math.ceil(h / ph) * ph * math.ceil(w / pw) * pw
        pairs = n * (n // (ph * pw) + ph * pw)
        c, ck = config.channels, config.key_channels
        return relation_cost(n, pairs, 2, c, ck, impl, batch, (ph, pw))

    @classmethod
    def mmseg_config(cls, state: dict[str, torch.Tensor]) -> dict[str, int]:
        key = "decode_head.global_relation.key_project.0.conv.weight"
        return {
            "decoder_channels": state["decode_head.in_conv.conv.weight"].shape[0],
            "decoder_isa_channels": state[key].shape[0],
        }


def auto_group(h: int, w: int) -> int:
    """Square block side ``s`` minimising ISA's affinities ``Np (Np / s^2 + s^2)`` on ``h x w``.

    Without padding the optimum is ``s^2 = sqrt(N)``; padding to a multiple of ``s`` counts.
    """

    def pairs(s: int) -> int:
        return ISADecoder.cost(h, w, HeadConfig(1, 1, down_factor=(s, s))).affinity_elements

    return min(range(1, max(h, w) + 1), key=lambda s: (pairs(s), s))


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last two dimensions, in float64: the combined map multiplies two
    softmax weights, so tiny ones stay non-zero."""
    flat = logits.double().flatten(-2)
    return flat.softmax(-1).view(logits.shape)


def affinity_matrices(record: ISARecord) -> dict[str, torch.Tensor]:
    """The full sparse affinities of both steps as dense ``(Np, Np)`` matrices (image 0).

    For teaching and tests on small maps only (``Np`` = padded positions, row-major): memory is
    ``Np^2``. ``C = A_second @ A_first`` is the combined affinity.
    """
    out = {}
    for step in ("long", "short"):
        q = getattr(record, f"{step}_q")[0].flatten(1).double()  # (Ck, Np)
        k = getattr(record, f"{step}_k")[0].flatten(1).double()
        logits = (q.T @ k) * record.scale  # (Np, Np)
        same = record.grid.group_ids(step)  # (Np,)
        logits = logits.masked_fill(same[:, None] != same[None, :], float("-inf"))
        out[step] = logits.softmax(-1)
    return out
