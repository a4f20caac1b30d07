"""ISA at inference, a chunk of attention sequences at a time: a memory concern of
:func:`isa_explorer.heads.isa.isa_context`, kept beside the math.

Every sequence of an ISA step is independent of the others, and in eval mode so is every layer
of a relation block (BatchNorm uses its running statistics), so running a few sequences at a
time gives the same numbers up to fp32 rounding, with queries, keys and values alive for one
chunk instead of the whole map.
"""

from __future__ import annotations

import torch
from torch import nn

from isa_explorer.heads.grid import GroupGrid

#: Positions per chunk on the CPU: 2048 tokens of 512 channels are 4 MiB per activation.
TOKEN_BUDGET = 2048
#: On other devices: a GPU is bound by kernel launches long before memory, so a 128x256 map
#: runs each step in one chunk there and only larger maps are split.
TOKEN_BUDGET_ACCELERATOR = 65536
#: What a streamed pass returns besides the context: ``{"{step}_q"/"{step}_k": map}``.
QK = dict[str, torch.Tensor]


def streamed(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    token_budget: int | None,
    return_attention: bool,
) -> tuple[torch.Tensor, QK | None]:
    """Both ISA steps at inference, a chunk of sequences at a time.

    Each chunk's tokens are gathered from the padded map, attended and projected, and written
    straight into the layout the next stage reads: the second step's tokens, then the output
    map (channels-last, so each move copies rows of ``C`` contiguous channels). No full-size
    token tensor is made for the first step's input or the second step's output. Peak at
    128x256, 512 channels: residual, second-step tokens and output map (3 x 64 MiB) plus ~20
    MiB of chunk buffers, against ~400 MiB for the whole map (``docs/benchmarks.md``).
    """
    if token_budget is None:
        token_budget = TOKEN_BUDGET if residual.device.type == "cpu" else TOKEN_BUDGET_ACCELERATOR
    (first, block1), (second, block2) = steps
    b, c = residual.shape[:2]
    attn: QK | None = {} if return_attention else None
    src = grid.step_view(grid.pad(residual).permute(0, 2, 3, 1), first)  # views, no copy
    mid = residual.new_empty(b, *grid.dims(second), c)  # tokens of the second step
    swap = (0, 3, 4, 1, 2, 5)  # (B, a, b, c, d, C) of one step -> (B, c, d, a, b, C)
    qk1 = _qk_maps(attn, first, block1, grid, residual)
    _chunks(block1, src, mid.permute(swap), token_budget, qk1)
    del src
    out = residual.new_empty(b, *grid.padded, c)  # (B, hp, wp, C)
    qk2 = _qk_maps(attn, second, block2, grid, residual)
    _chunks(block2, mid, grid.step_view(out, second), token_budget, qk2)
    return grid.crop(out.permute(0, 3, 1, 2)), attn  # (B, C, H, W), channels-last


def _qk_maps(
    attn: QK | None, step: str, block: nn.Module, grid: GroupGrid, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """New padded maps for one step's queries and keys (in ``attn``), as views in its layout."""
    if attn is None:
        return None
    maps = [like.new_empty(like.shape[0], *grid.padded, block.isa_channels) for _ in "qk"]
    attn[f"{step}_q"], attn[f"{step}_k"] = (m.permute(0, 3, 1, 2) for m in maps)  # (B, Ck, hp, wp)
    return grid.step_view(maps[0], step), grid.step_view(maps[1], step)


def _chunks(
    block: nn.Module,
    src: torch.Tensor,
    dst: torch.Tensor,
    token_budget: int,
    qk: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """Attend ``src`` into ``dst``, both ``(B, d1, d2, d3, d4, C)`` in one step's layout.

    Sequences are ``(B, d1, d2)``, their positions ``(d3, d4)``; a chunk is whole rows of
    ``d1`` or, when one row holds more than ``token_budget`` positions, part of one row (at
    least one sequence). With ``qk``, each chunk's queries and keys are written there too.
    """
    b, d1, d2, d3, d4, c = src.shape
    per_seq = b * d3 * d4  # positions of one (d1, d2) entry over the batch
    n2 = max(1, min(d2, token_budget // per_seq))  # d2 entries per chunk
    n1 = max(1, token_budget // (per_seq * d2)) if n2 == d2 else 1  # d1 rows per chunk
    for i in range(0, d1, n1):
        for k in range(0, d2, n2):
            rows, cols = slice(i, min(i + n1, d1)), slice(k, min(k + n2, d2))
            t = src[:, rows, cols].reshape(-1, d3 * d4, c)  # (B * n1 * n2, L, C): a copy
            shape = (b, rows.stop - i, cols.stop - k, d3, d4)
            if qk is None:
                y = block(t, "fused")  # (B * n1 * n2, L, C)
            else:
                y, q, key = block(t, "fused", return_qk=True)
                for view, v in zip(qk, (q, key), strict=True):
                    view[:, rows, cols] = v.view(*shape, -1)
            dst[:, rows, cols] = y.view(*shape, c)
