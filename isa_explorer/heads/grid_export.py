"""ISA's grid for symbolic sizes: one exported graph (``torch.export``, ONNX) for every size.

Symbolic grids use an equivalent formulation without shape-dependent branches: index gathers
instead of padding and slicing, and explicit copies instead of ``reshape``'s view-or-copy
choice (which depends on which sizes are 1, and would fix that in an export). Concrete grids
keep the faster eager one; ``tests/test_export.py`` checks that both give the same numbers.
"""

from __future__ import annotations

import torch

from isa_explorer.heads.grid import GroupGrid


def grid_for(h: int, w: int, down_factor: tuple[int, int]) -> GroupGrid:
    """The grid of an ``h x w`` map: a :class:`SymbolicGroupGrid` when a size is symbolic."""
    concrete = isinstance(h, int) and isinstance(w, int)
    return (GroupGrid if concrete else SymbolicGroupGrid).of(h, w, down_factor)


class SymbolicGroupGrid(GroupGrid):
    """:class:`GroupGrid` with the formulation of symbolic sizes (see the module)."""

    symbolic = True

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        hp, wp = self.padded
        x = _gather_pad(x, 2, self.pad_top, self.h, hp)
        return _gather_pad(x, 3, self.pad_left, self.w, wp)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(self.h, device=x.device) + self.pad_top
        cols = torch.arange(self.w, device=x.device) + self.pad_left
        return x.index_select(-2, rows).index_select(-1, cols)

    def _tokens(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        return self._reshape(x, *shape)

    def _reshape(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
        return x.clone(memory_format=torch.contiguous_format).view(*shape)


def _gather_pad(x: torch.Tensor, dim: int, before, size, total) -> torch.Tensor:
    """Zero-pad dimension ``dim`` of ``x`` (length ``size``) to ``total``, ``before`` zeros
    first, as one gather: no branch on whether a side's padding is zero."""
    idx = torch.arange(total, device=x.device) - before  # source index of each output row
    idx = torch.where((idx >= 0) & (idx < size), idx, size)  # ``size``: the zero row below
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([x, zero], dim).index_select(dim, idx)
