"""The fused ISA context at inference, streamed over groups of attention sequences.

Every attention sequence of a step is independent of the others, and in eval mode so is every
layer of a relation block (BatchNorm uses its running statistics). So at inference the two
steps can run a few sequences at a time: gather their tokens from the map, attend, project, and
write the result straight into the layout the next stage reads. Queries, keys, values and the
attention output then exist for one chunk of about ``token_budget`` positions at a time instead
of for the whole map, and no full-size token tensor is made for the first step's input or the
second step's output. Asked for the queries and keys, each chunk writes its own into padded
maps. A decoder prepared for inference runs this
(:class:`~isa_explorer.models.prepare.PreparedISADecoder`); the plain decoder, for training and
gradients, runs the whole map at once (:func:`~isa_explorer.models.isa.decoder.isa_context`).

Tokens are kept channels-last, so moving them between the layouts of the two steps copies rows
of ``C`` contiguous channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from isa_explorer.models.isa.decoder import GroupGrid

#: Positions per chunk on the CPU: 2048 tokens of 512 channels are 4 MiB per activation.
TOKEN_BUDGET = 2048
#: Positions per chunk on other devices: a GPU is bound by kernel launches long before memory,
#: so a 128x256 map runs each step in one chunk there and only larger maps are split.
TOKEN_BUDGET_ACCELERATOR = 65536

# Permutations of a padded channels-last map viewed as (B, gh, lh, gw, lw, C):
_NHWC_TO = {
    "long": (0, 2, 4, 1, 3, 5),  # -> (B, lh, lw, gh, gw, C)
    "short": (0, 1, 3, 2, 4, 5),  # -> (B, gh, gw, lh, lw, C)
}
_SWAP = (0, 3, 4, 1, 2, 5)  # (B, a, b, c, d, C) of one step <-> (B, c, d, a, b, C) of the other


def streamed_context(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    token_budget: int | None = None,
    return_attention: bool = False,
) -> tuple[torch.Tensor, dict | None]:
    """Both fused attention steps on ``residual``, chunk by chunk (inference only).

    Args:
        steps: ``((first, block), (second, block))`` of prepared relation blocks
            (:class:`~isa_explorer.models.inference.PreparedRelation`).
        residual: Output of ``in_conv``, ``(B, C, H, W)`` in any memory layout.
        grid: The :class:`GroupGrid` for ``(H, W)``.
        token_budget: About how many positions one chunk holds (at least one row of
            sequences); when ``None``, :data:`TOKEN_BUDGET` on the CPU and
            :data:`TOKEN_BUDGET_ACCELERATOR` elsewhere.
        return_attention: Also write every chunk's queries and keys into padded maps.

    Returns:
        The context ``(B, C, H, W)``, stored channels-last, and, when asked, the attention
        dict of :func:`~isa_explorer.models.isa.decoder.isa_context` (maps stored
        channels-last).
    """
    if token_budget is None:
        cpu = residual.device.type == "cpu"
        token_budget = TOKEN_BUDGET if cpu else TOKEN_BUDGET_ACCELERATOR
    b, c = residual.shape[:2]
    hp, wp = grid.padded
    x = grid.pad(residual).permute(0, 2, 3, 1)  # (B, hp, wp, C), a view
    (first, block1), (second, block2) = steps
    attn = {"grid": grid} if return_attention else None
    # Tokens of the second step, (B, e1, e2, e3, e4, C): the first step writes into them.
    mid = x.new_empty(b, *grid._dims(second), c)
    blocks = x.view(b, grid.gh, grid.lh, grid.gw, grid.lw, c)  # (B, gh, lh, gw, lw, C)
    qk1 = _qk_maps(attn, first, block1, residual, grid)
    _run_step(block1, blocks.permute(_NHWC_TO[first]), mid.permute(_SWAP), token_budget, qk1)
    del x, blocks
    out = residual.new_empty(b, hp, wp, c)  # (B, hp, wp, C)
    out_steps = out.view(b, grid.gh, grid.lh, grid.gw, grid.lw, c).permute(_NHWC_TO[second])
    qk2 = _qk_maps(attn, second, block2, residual, grid)
    _run_step(block2, mid, out_steps, token_budget, qk2)
    del mid
    return grid.crop(out.permute(0, 3, 1, 2)), attn  # (B, C, H, W), channels-last


def _qk_maps(
    attn: dict | None, step: str, block: nn.Module, like: torch.Tensor, grid: GroupGrid
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Padded channels-last maps for one step's queries and keys, as views in its layout."""
    if attn is None:
        return None
    b, (hp, wp), ck = like.shape[0], grid.padded, block.isa_channels
    views = []
    for name in ("q", "k"):
        m = like.new_empty(b, hp, wp, ck)  # (B, hp, wp, Ck)
        attn[f"{step}_{name}"] = m.permute(0, 3, 1, 2)  # (B, Ck, hp, wp)
        views.append(m.view(b, grid.gh, grid.lh, grid.gw, grid.lw, ck).permute(_NHWC_TO[step]))
    return views[0], views[1]


def _run_step(
    block: nn.Module,
    src: torch.Tensor,
    dst: torch.Tensor,
    token_budget: int,
    qk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Attend ``src`` into ``dst``, both ``(B, d1, d2, d3, d4, C)`` views in one step's layout.

    Sequences are ``(B, d1, d2)``, their positions ``(d3, d4)``; chunks split ``d1``. With
    ``qk``, each chunk's queries and keys are written into those views too.
    """
    b, d1, d2, d3, d4, c = src.shape
    per = max(1, token_budget // (b * d2 * d3 * d4))  # d1 rows per chunk
    for i in range(0, d1, per):
        j = min(i + per, d1)
        t = src[:, i:j].reshape(-1, d3 * d4, c)  # (B * n * d2, L, C): a copy of the chunk
        if qk is None:
            y = block.chunk(t)  # (B * n * d2, L, C)
        else:
            y, q, k = block.chunk(t, return_qk=True)
            for view, v in zip(qk, (q, k), strict=True):
                view[:, i:j] = v.view(b, j - i, d2, d3, d4, -1)
        dst[:, i:j] = y.view(b, j - i, d2, d3, d4, c)
