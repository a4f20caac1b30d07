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

from typing import Literal

import torch
from torch import nn

from isa_explorer.models.checkpointing import checkpointed, keep_products
from isa_explorer.models.heads import Attention, ContextHead
from isa_explorer.models.isa.grid import GroupGrid
from isa_explorer.models.layers import AttnImpl, RelationBlock

Order = Literal["long-short", "short-long"]

#: Positions per chunk of the streamed inference path on the CPU: 2048 tokens of 512 channels
#: are 4 MiB per activation.
TOKEN_BUDGET = 2048
#: On other devices: a GPU is bound by kernel launches long before memory, so a 128x256 map
#: runs each step in one chunk there and only larger maps are split.
TOKEN_BUDGET_ACCELERATOR = 65536


def isa_context(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    impl: AttnImpl,
    return_attention: bool = False,
    checkpoint: Literal["full", "selective"] | None = None,
    token_budget: int | None = None,
) -> tuple[torch.Tensor, Attention | None]:
    """Both ISA steps: pad, group into sequences, attend, regroup, attend, crop.

    With autograd (training, gradients) the whole map runs at once. At inference of the fused
    path (no autograd, eval mode, concrete sizes) the same blocks run a few sequences at a
    time (:func:`_streamed`): every sequence of a step is independent of the others, and in
    eval mode so is every layer of a relation block (BatchNorm uses its running statistics),
    so the numbers are the same up to fp32 rounding, with queries, keys and values alive for
    one chunk instead of the whole map.

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
        token_budget: Positions per chunk when streamed (``None``: :data:`TOKEN_BUDGET` on
            the CPU, :data:`TOKEN_BUDGET_ACCELERATOR` elsewhere).

    Returns:
        The context ``(B, C, H, W)`` and, when asked, ``{"grid": grid, "{step}_q": ...,
        "{step}_k": ...}`` with padded maps ``(B, Ck, hp, wp)`` for ``step`` in long/short.
    """
    streamed = (
        impl != "explicit"
        and not torch.is_grad_enabled()
        and not grid.symbolic
        and not torch.compiler.is_compiling()
        and not any(m.training for _, block in steps for m in block.modules())
    )
    if streamed:
        return _streamed(steps, residual, grid, token_budget, return_attention)
    first, second = steps[0][0], steps[1][0]
    t = grid.to_tokens(grid.pad(residual), first)  # (B * groups, L, C)
    attn: Attention | None = {"grid": grid} if return_attention else None
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


def _streamed(
    steps: tuple[tuple[str, nn.Module], tuple[str, nn.Module]],
    residual: torch.Tensor,
    grid: GroupGrid,
    token_budget: int | None,
    return_attention: bool,
) -> tuple[torch.Tensor, Attention | None]:
    """:func:`isa_context` at inference, a chunk of sequences at a time.

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
    attn: Attention | None = {"grid": grid} if return_attention else None
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
    attn: Attention | None, step: str, block: nn.Module, grid: GroupGrid, like: torch.Tensor
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
        checkpoint_relations: Full activation checkpointing of the two relation blocks in
            training (``False``; ``train/fit.py --set checkpoint_attention=true``): only their
            inputs are kept for backward, everything else is recomputed there, for the least
            memory and a second forward of the blocks. Without it, training checkpoints the
            blocks *selectively* (``selective_checkpoint``, ``True``): the outputs of their
            matrix products and attention kernels are kept, and backward recomputes only the
            ReLUs, BatchNorm's normalisation and layout copies from them: less memory than a
            plain step, in about its time (:func:`~isa_explorer.models.checkpointing.checkpointed` with
            :func:`~isa_explorer.models.checkpointing.keep_products`; not with ``return_attention``,
            under ``torch.compile``, or with SyncBatchNorm). ``selective_checkpoint = False``
            runs the plain blocks. Neither is a weight or a config of the model: they are not
            saved with it.
        token_budget: Positions per chunk of the streamed inference path (``None``: the
            device's default, see :func:`isa_context`); not saved with the model either.

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
        self.selective_checkpoint = True
        self.token_budget: int | None = None

    @property
    def steps(self) -> tuple[tuple[str, RelationBlock], tuple[str, RelationBlock]]:
        """The two attention steps in the order they run: ``(("long", block), ("short", block))``."""
        long_, short_ = ("long", self.global_relation), ("short", self.local_relation)
        return (long_, short_) if self.order == "long-short" else (short_, long_)

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
        checkpoint = None
        if self.training and torch.is_grad_enabled() and not return_attention:
            if self.checkpoint_relations:
                checkpoint = "full"
            elif self.selective_checkpoint and not torch.compiler.is_compiling():
                checkpoint = "selective"  # compiled: the partitioner picks what to recompute
        context, attn = isa_context(
            self.steps,
            residual,
            grid,
            self.attn_impl,
            return_attention,
            checkpoint,
            self.token_budget,
        )
        return context, residual, attn
