"""The geometry of ISA's interlaced grouping: :class:`GroupGrid`.

Pads a feature map to whole ``lh x lw`` blocks (symmetrically, as mmseg), says which block and
long-range group a cell belongs to (the explorer's views), and moves a map between its raster
layout and the token layouts of the two attention steps (:mod:`isa_explorer.heads.isa`). The
formulation for symbolic sizes (``torch.export``, ONNX) is apart, in
:mod:`isa_explorer.heads.grid_export`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Permutations of the padded map viewed as (B, C, gh, lh, gw, lw):
_NCHW_TO_LONG = (0, 3, 5, 2, 4, 1)  # -> (B, lh, lw, gh, gw, C)
_NCHW_TO_SHORT = (0, 2, 4, 3, 5, 1)  # -> (B, gh, gw, lh, lw, C)
_SWAP = (0, 3, 4, 1, 2, 5)  # long <-> short: (B, a, b, c, d, C) -> (B, c, d, a, b, C)
_LONG_TO_NHWC = (0, 3, 1, 4, 2, 5)  # (B, lh, lw, gh, gw, C) -> (B, gh, lh, gw, lw, C)
_SHORT_TO_NHWC = (0, 1, 3, 2, 4, 5)  # (B, gh, gw, lh, lw, C) -> (B, gh, lh, gw, lw, C)
# Permutations of a channels-last padded map viewed as (B, gh, lh, gw, lw, C):
_NHWC_TO_LONG = (0, 2, 4, 1, 3, 5)  # -> (B, lh, lw, gh, gw, C)
_NHWC_TO_SHORT = (0, 1, 3, 2, 4, 5)  # -> (B, gh, gw, lh, lw, C)


@dataclass(frozen=True)
class GroupGrid:
    """Geometry of the interlaced grouping of one feature map.

    Attributes:
        h, w: Unpadded feature size.
        lh, lw: Local block size (``down_factor``).
        gh, gw: Number of blocks per column / row.
        pad_top, pad_left: Symmetric zero padding before the map (bottom/right get the rest).
    """

    h: int
    w: int
    lh: int
    lw: int
    gh: int
    gw: int
    pad_top: int
    pad_left: int

    @classmethod
    def of(cls, h: int, w: int, down_factor: tuple[int, int]) -> GroupGrid:
        """The grid of an ``h x w`` map. Integer arithmetic only (ceil-division, halves), so
        ``h`` and ``w`` may be symbolic sizes (``torch.export``, ONNX export) and stay so
        (:func:`~isa_explorer.heads.grid_export.grid_for` picks the formulation)."""
        lh, lw = down_factor
        gh, gw = (h + lh - 1) // lh, (w + lw - 1) // lw  # ceil(h / lh), ceil(w / lw)
        pad_top, pad_left = (gh * lh - h) // 2, (gw * lw - w) // 2
        return cls(h, w, lh, lw, gh, gw, pad_top, pad_left)

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

    #: Whether this grid uses the formulation of symbolic sizes (a ``SymbolicGroupGrid``).
    symbolic = False

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, C, h, w)`` to the padded size, symmetrically as mmseg does."""
        hp, wp = self.padded
        if (hp, wp) == (self.h, self.w):
            return x
        pl, pt = self.pad_left, self.pad_top
        return F.pad(x, (pl, wp - self.w - pl, pt, hp - self.h - pt))

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Crop ``(..., hp, wp)`` back to ``(..., h, w)``."""
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
        t = t.view(b, *self.dims(step), c).permute(_SWAP)
        other = "short" if step == "long" else "long"
        return self._tokens(t, b * self._num_seq(other), self._seq_len(other), c)

    def to_map(self, t: torch.Tensor, step: str) -> torch.Tensor:
        """Tokens of ``step`` -> padded map ``(B, C, hp, wp)``.

        Two copies, each fast: rows of ``C`` channels into raster order, then one transpose
        (a single six-dimensional permutation is several times slower on the CPU).
        """
        b, c = t.shape[0] // self._num_seq(step), t.shape[-1]
        t = t.view(b, *self.dims(step), c)
        t = t.permute(_LONG_TO_NHWC if step == "long" else _SHORT_TO_NHWC)
        hp, wp = self.padded
        t = self._reshape(t, b, hp * wp, c)  # (B, hp * wp, C) in raster order
        return self._reshape(t.transpose(1, 2), b, c, hp, wp)

    def step_view(self, m: torch.Tensor, step: str) -> torch.Tensor:
        """A channels-last padded map ``(B, hp, wp, C)`` in the token order of ``step``:
        ``(B, *dims(step), C)``, sequences first, a view (no copy)."""
        b, c = m.shape[0], m.shape[-1]
        m = m.view(b, self.gh, self.lh, self.gw, self.lw, c)  # (B, gh, lh, gw, lw, C)
        return m.permute(_NHWC_TO_LONG if step == "long" else _NHWC_TO_SHORT)

    def _tokens(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        """A permuted view -> contiguous tokens ``shape``: always one copy. (``reshape`` can
        return a strided view here -- the swap of the two steps' layouts is a transpose of
        ``(sequences, length)`` -- and then each of the next block's three projections would
        copy it again, and keep its own copy for backward.)"""
        if self.symbolic:
            return self._reshape(x, *shape)
        return x.contiguous().view(*shape)

    def _reshape(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        return x.reshape(*shape)

    def dims(self, step: str) -> tuple[int, int, int, int]:
        """The token tensor of ``step`` viewed as ``(B, *dims, C)``: sequences first."""
        return (
            (self.lh, self.lw, self.gh, self.gw)
            if step == "long"
            else (self.gh, self.gw, self.lh, self.lw)
        )

    def _seq_len(self, step: str) -> int:
        return self.gh * self.gw if step == "long" else self.lh * self.lw

    def _num_seq(self, step: str) -> int:
        return self.lh * self.lw if step == "long" else self.gh * self.gw
