"""The Interlaced Sparse Self-Attention decoder (mmsegmentation ``ISAHead`` semantics).

A feature map of ``H x W`` positions is cut into ``gh x gw`` local blocks of ``lh x lw``
(``down_factor``, 8 x 8 by default; the map is zero-padded symmetrically to a multiple of it).
Writing a row index as ``i = gi * lh + li`` (block ``gi``, offset ``li``):

* long-range step (``global_relation``): positions that share an offset ``(li, lj)`` attend to
  each other -- ``lh * lw`` sequences of ``gh * gw`` positions, each ``lh`` rows apart;
* short-range step (``local_relation``): positions of one block attend to each other --
  ``gh * gw`` sequences of ``lh * lw`` positions.

After both steps every position has drawn information from every other one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from isa_explorer.models import saved
from isa_explorer.models.heads import Attention, ContextHead
from isa_explorer.models.layers import AttnImpl, RelationBlock, checkpointed

Order = Literal["long-short", "short-long"]

# Permutations of the padded map viewed as (B, C, gh, lh, gw, lw):
_NCHW_TO_LONG = (0, 3, 5, 2, 4, 1)  # -> (B, lh, lw, gh, gw, C)
_NCHW_TO_SHORT = (0, 2, 4, 3, 5, 1)  # -> (B, gh, gw, lh, lw, C)
_SWAP = (0, 3, 4, 1, 2, 5)  # long <-> short: (B, a, b, c, d, C) -> (B, c, d, a, b, C)
_LONG_TO_NHWC = (0, 3, 1, 4, 2, 5)  # (B, lh, lw, gh, gw, C) -> (B, gh, lh, gw, lw, C)
_SHORT_TO_NHWC = (0, 1, 3, 2, 4, 5)  # (B, gh, gw, lh, lw, C) -> (B, gh, lh, gw, lw, C)


@dataclass(frozen=True)
class GroupGrid:
    """Geometry of the interlaced grouping of one feature map.

    Attributes:
        h, w: Unpadded feature size.
        lh, lw: Local block size (``down_factor``).
        gh, gw: Number of blocks per column / row.
        pad_top, pad_left: Symmetric zero padding before the map (bottom/right get the rest).
        symbolic_ops: Use the formulation of symbolic sizes (see :attr:`symbolic`) even for
            concrete ones, e.g. to check that both give the same numbers.
    """

    h: int
    w: int
    lh: int
    lw: int
    gh: int
    gw: int
    pad_top: int
    pad_left: int
    symbolic_ops: bool = False

    @classmethod
    def of(
        cls, h: int, w: int, down_factor: tuple[int, int], symbolic_ops: bool = False
    ) -> GroupGrid:
        """The grid of an ``h x w`` map. Integer arithmetic only (ceil-division, halves), so
        ``h`` and ``w`` may be symbolic sizes (``torch.export``, ONNX export) and stay so."""
        lh, lw = down_factor
        gh, gw = (h + lh - 1) // lh, (w + lw - 1) // lw  # ceil(h / lh), ceil(w / lw)
        pad_top, pad_left = (gh * lh - h) // 2, (gw * lw - w) // 2
        return cls(h, w, lh, lw, gh, gw, pad_top, pad_left, symbolic_ops)

    @property
    def padded(self) -> tuple[int, int]:
        return self.gh * self.lh, self.gw * self.lw

    def locate(self, fx: int, fy: int) -> tuple[int, int, int, int]:
        """Unpadded cell ``(fx, fy)`` -> ``(bi, bj, li, lj)``: its block and its offset in it.

        The block ``(bi, bj)`` is the cell's short-range group; the offset ``(li, lj)`` names
        its long-range group (the cells at the same offset in every block).
        """
        py, px = fy + self.pad_top, fx + self.pad_left  # padded coordinates
        return py // self.lh, px // self.lw, py % self.lh, px % self.lw

    def block_bounds(self, bi: int, bj: int) -> tuple[int, int, int, int]:
        """Unpadded cells ``(r0, c0, r1, c1)`` (end exclusive) of block ``(bi, bj)``, clipped."""
        r0, c0 = bi * self.lh - self.pad_top, bj * self.lw - self.pad_left
        return max(r0, 0), max(c0, 0), min(r0 + self.lh, self.h), min(c0 + self.lw, self.w)

    def group_cells(self, li: int, lj: int) -> tuple[range, range]:
        """Unpadded rows and columns of the long-range group at offset ``(li, lj)``."""
        first_r, first_c = (li - self.pad_top) % self.lh, (lj - self.pad_left) % self.lw
        return range(first_r, self.h, self.lh), range(first_c, self.w, self.lw)

    def block_edges(self) -> tuple[list[int], list[int]]:
        """Inner rows and columns (unpadded cell indices) where a new block starts."""
        rows = [r for r in range(1, self.h) if (r + self.pad_top) % self.lh == 0]
        cols = [c for c in range(1, self.w) if (c + self.pad_left) % self.lw == 0]
        return rows, cols

    def group_ids(self, step: str) -> torch.Tensor:
        """``(hp * wp,)``: the id of each padded position's group in ``step`` (row-major).

        ``long``: positions at the same offset in their blocks share an id; ``short``:
        positions of one block do.
        """
        hp, wp = self.padded
        rows = torch.arange(hp).view(hp, 1).expand(hp, wp)
        cols = torch.arange(wp).view(1, wp).expand(hp, wp)
        if step == "long":
            return ((rows % self.lh) * self.lw + cols % self.lw).flatten()
        return ((rows // self.lh) * self.gw + cols // self.lw).flatten()

    @property
    def symbolic(self) -> bool:
        """Whether the sizes are symbolic (``torch.export`` / ONNX export with dynamic H, W).

        Symbolic grids use an equivalent formulation without shape-dependent branches (index
        gathers instead of padding and slicing, explicit copies instead of ``reshape``'s
        view-or-copy choice), so one exported graph serves every size; concrete grids keep the
        faster eager one. ``tests/test_export.py`` checks that both give the same numbers.
        """
        return self.symbolic_ops or not (isinstance(self.h, int) and isinstance(self.w, int))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, C, h, w)`` to the padded size, symmetrically as mmseg does."""
        hp, wp = self.padded
        if self.symbolic:
            x = _gather_pad(x, 2, self.pad_top, self.h, hp)
            return _gather_pad(x, 3, self.pad_left, self.w, wp)
        if (hp, wp) == (self.h, self.w):
            return x
        pl, pt = self.pad_left, self.pad_top
        return F.pad(x, (pl, wp - self.w - pl, pt, hp - self.h - pt))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Crop ``(..., hp, wp)`` back to ``(..., h, w)``."""
        if self.symbolic:
            rows = torch.arange(self.h, device=x.device) + self.pad_top
            cols = torch.arange(self.w, device=x.device) + self.pad_left
            return x.index_select(-2, rows).index_select(-1, cols)
        return x[..., self.pad_top : self.pad_top + self.h, self.pad_left : self.pad_left + self.w]

    def to_tokens(self, x: torch.Tensor, step: str) -> torch.Tensor:
        """Padded ``(B, C, hp, wp)`` -> token sequences of one step.

        ``long``: ``(B * lh * lw, gh * gw, C)``; ``short``: ``(B * gh * gw, lh * lw, C)``.
        """
        b, c = x.shape[:2]
        x = x.view(b, c, self.gh, self.lh, self.gw, self.lw)
        x = x.permute(_NCHW_TO_LONG if step == "long" else _NCHW_TO_SHORT)
        # Sizes spelled out (no -1), so symbolic sizes need no divisibility proof.
        return self._tokens(x, b * self._num_seq(step), self._seq_len(step), c)

    def swap(self, t: torch.Tensor, step: str) -> torch.Tensor:
        """Tokens of ``step`` -> tokens of the other step (one permutation)."""
        b, c = t.shape[0] // self._num_seq(step), t.shape[-1]
        t = t.view(b, *self._dims(step), c).permute(_SWAP)
        other = "short" if step == "long" else "long"
        return self._tokens(t, b * self._num_seq(other), self._seq_len(other), c)

    def to_map(self, t: torch.Tensor, step: str) -> torch.Tensor:
        """Tokens of ``step`` -> padded map ``(B, C, hp, wp)``.

        Two copies, each fast: rows of ``C`` channels into raster order, then one transpose
        (a single six-dimensional permutation is several times slower on the CPU).
        """
        b, c = t.shape[0] // self._num_seq(step), t.shape[-1]
        t = t.view(b, *self._dims(step), c)
        t = t.permute(_LONG_TO_NHWC if step == "long" else _SHORT_TO_NHWC)
        hp, wp = self.padded
        t = self._reshape(t, b, hp * wp, c)  # (B, hp * wp, C) in raster order
        return self._reshape(t.transpose(1, 2), b, c, hp, wp)

    def _tokens(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        """A permuted view -> contiguous tokens ``shape``: always one copy. (``reshape`` can
        return a strided view here -- the swap of the two steps' layouts is a transpose of
        ``(sequences, length)`` -- and then each of the next block's three projections would
        copy it again, and keep its own copy for backward.)"""
        if self.symbolic:
            return self._reshape(x, *shape)
        return x.contiguous().view(*shape)

    def _reshape(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        """``x.reshape(shape)``; for symbolic sizes always a copy (reshape's choice between a
        view and a copy depends on which sizes are 1, and would fix that in an export)."""
        if self.symbolic:
            return x.clone(memory_format=torch.contiguous_format).view(*shape)
        return x.reshape(*shape)

    def _dims(self, step: str) -> tuple[int, int, int, int]:
        return (
            (self.lh, self.lw, self.gh, self.gw)
            if step == "long"
            else (self.gh, self.gw, self.lh, self.lw)
        )

    def _seq_len(self, step: str) -> int:
        return self.gh * self.gw if step == "long" else self.lh * self.lw

    def _num_seq(self, step: str) -> int:
        return self.lh * self.lw if step == "long" else self.gh * self.gw


def _gather_pad(x: torch.Tensor, dim: int, before, size, total) -> torch.Tensor:
    """Zero-pad dimension ``dim`` of ``x`` (length ``size``) to ``total``, ``before`` zeros
    first, as one gather: no branch on whether a side's padding is zero."""
    idx = torch.arange(total, device=x.device) - before  # source index of each output row
    idx = torch.where((idx >= 0) & (idx < size), idx, size)  # ``size``: the zero row below
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([x, zero], dim).index_select(dim, idx)


def isa_context(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    impl: AttnImpl,
    return_attention: bool = False,
    checkpoint: bool = False,
) -> tuple[torch.Tensor, Attention | None]:
    """Both ISA steps over the whole map at once.

    Args:
        steps: ``((first, block), (second, block))``, e.g. ``(("long", global_relation),
            ("short", local_relation))``; the blocks are relation blocks, plain or prepared
            for inference (called as ``block(tokens, impl, return_qk=...)``).
        residual: Output of ``in_conv``, ``(B, C, H, W)``.
        grid: The :class:`GroupGrid` of ``(H, W)``.
        impl: ``"fused"`` or ``"explicit"`` attention.
        return_attention: Also return the queries and keys.
        checkpoint: Run each block under activation checkpointing
            (:func:`~isa_explorer.models.layers.checkpointed`; not with ``return_attention``).

    Returns:
        The context ``(B, C, H, W)`` and, when asked, ``{"grid": grid, "{step}_q": ...,
        "{step}_k": ...}`` with padded maps ``(B, Ck, hp, wp)`` for ``step`` in long/short.
    """
    (first, block1), (second, block2) = steps
    t = grid.to_tokens(grid.pad(residual), first)  # (B * groups, L, C)
    attn: Attention | None = {"grid": grid} if return_attention else None
    for i, (step, block) in enumerate(steps):
        if i:
            t = grid.swap(t, first)  # tokens of the second step
        if attn is None:
            t = checkpointed(block, t, impl) if checkpoint else block(t, impl)
            continue
        t, q, k = block(t, impl, return_qk=True)
        attn[f"{step}_q"], attn[f"{step}_k"] = grid.to_map(q, step), grid.to_map(k, step)
    return grid.crop(grid.to_map(t, second)), attn  # (B, C, H, W)


class ISADecoder(ContextHead):
    """ISA head: ``in_conv`` -> long-range -> short-range -> ``out_conv`` -> classifier.

    Attention keys (``return_attention=True``): ``grid`` (:class:`GroupGrid`) and, for
    ``step`` in ``long``/``short``, ``{step}_q`` and ``{step}_k`` as padded maps
    ``(B, Ck, hp, wp)``.

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

    Attributes:
        checkpoint_relations: Activation checkpointing of the two relation blocks in training
            (``False``; ``train/fit.py --set checkpoint_attention=true``): their activations
            are recomputed in backward instead of kept, for less memory and a second forward
            of the blocks. Not a weight or a config of the model: it is not saved with it.

    Shapes:
        ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits at feature resolution.
    """

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

    @property
    def steps(self) -> tuple[tuple[str, RelationBlock], tuple[str, RelationBlock]]:
        """The two attention steps in the order they run: ``(("long", block), ("short", block))``."""
        return ordered_steps(self.order, self.global_relation, self.local_relation)

    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Attention | None]:
        """Run ``in_conv`` and both attention steps.

        Returns:
            ``(context, residual, attention)``: the first two ``(B, channels, H, W)``, the
            last as documented by the class (``None`` unless ``return_attention``).
        """
        residual = self.in_conv(x)  # (B, C, H, W)
        grid = GroupGrid.of(*residual.shape[-2:], self.down_factor)
        checkpoint = self.checkpoint_relations and self.training and torch.is_grad_enabled()
        # Training: backward rebuilds the cheap saved tensors (isa_explorer.models.saved).
        lean = saved.active(self) and not checkpoint and not return_attention
        with saved.RecomputeSaved() if lean else contextlib.nullcontext():
            context, attn = isa_context(
                self.steps, residual, grid, self.attn_impl, return_attention, checkpoint
            )
        return context, residual, attn


def ordered_steps(order: Order, long_block: nn.Module, short_block: nn.Module) -> tuple:
    """``(("long", long_block), ("short", short_block))`` in the order ``order`` runs them."""
    long_, short_ = ("long", long_block), ("short", short_block)
    return (long_, short_) if order == "long-short" else (short_, long_)
