"""Global context head (GCNet: Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", ICCV Workshops 2019, arXiv 1904.11492), as mmseg's ``GCHead``.

GCNet's finding: the attention maps a non-local block computes for different query positions
are nearly the same, so a block can compute *one* map for the whole image. Its global context
block (mmcv's ``ContextBlock`` with ``pooling_type="att"``, ``fusion_types=("channel_add",)``)
on ``x (B, C, h, w)`` with positions ``p``:

* context mask (attention pooling): ``a_p = softmax_p(w_m . x_p + b_m)``, a 1x1 convolution to
  one channel (``conv_mask``) and a softmax over all ``N = h * w`` positions;
* pooled context: ``c = sum_p a_p x_p``, one ``C``-vector per image;
* transform (``channel_add_conv``, a bottleneck of ``C * ratio`` channels):
  ``t = W_2 ReLU(LN(W_1 c + b_1)) + b_2``, LayerNorm over ``[C * ratio, 1, 1]``;
* fusion: ``y_p = x_p + t`` for every position.

The head is mmseg's ``FCNHead`` (two 3x3 conv-BN-ReLU, input concat, ``conv_cat``) with the
block between its first and second conv (``ratio`` 1/4 as published). The one map a query sees
is the context mask ``a``, the same for every query: ``O(N)`` to record and to show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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

#: The published bottleneck ratio of the transform (``gcnet_r50-d8.py``).
RATIO = 0.25
#: Peak memory of :meth:`GCHead.cost` per pass: ``(a, f)``, ``a`` ``N x C`` activations plus
#: ``f`` times the ``N``-entry mask, fitted to fresh-process CPU peaks
#: (:mod:`isa_explorer.costs.measure`) of the block alone with ``C = 512`` at 32x64, 64x128 and
#: 128x256 positions, rounded up to cover the two larger (a few MiB of fixed workspace, not
#: modelled, exceed it at the smallest).
PEAK = {"forward": (1.5, 1), "forward+backward": (6, 1)}


class ContextBlock(nn.Module):
    """mmcv's ``ContextBlock`` with attention pooling and channel-add fusion (GCNet's block).

    Submodule names and indices are mmcv's: ``conv_mask``, ``channel_add_conv.{0,1,3}``.

    Args:
        in_channels: Channels ``C`` of the input and output.
        ratio: Bottleneck width of the transform, ``planes = int(C * ratio)``.
    """

    def __init__(self, in_channels: int, ratio: float = RATIO):
        super().__init__()
        planes = int(in_channels * ratio)
        if planes < 1:
            raise ValueError(f"ratio {ratio} leaves no channel of {in_channels} in the transform")
        self.conv_mask = nn.Conv2d(in_channels, 1, 1)
        self.softmax = nn.Softmax(dim=2)
        # mmcv's ReLU is in place; numbers and weights are the same, and hooks on the
        # LayerNorm see its output unchanged.
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(in_channels, planes, 1),
            nn.LayerNorm([planes, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(planes, in_channels, 1),
        )
        # mmcv's initialisation: the block starts as the identity (its last conv zero).
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add_conv[-1].weight)
        nn.init.zeros_(self.channel_add_conv[-1].bias)

    def spatial_pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention pooling of ``x (B, C, h, w)``.

        Returns:
            The pooled context ``(B, C, 1, 1)`` and the context mask ``(B, 1, h, w)`` (softmax
            over the ``h * w`` positions).
        """
        logits = self.conv_mask(x)  # (B, 1, h, w)
        mask = self.softmax(logits.flatten(2))  # (B, 1, h*w), over positions
        context = torch.matmul(x.flatten(2), mask.transpose(1, 2))  # (B, C, N) @ (B, N, 1)
        return context.unsqueeze(-1), mask.view_as(logits)  # (B, C, 1, 1), (B, 1, h, w)

    def forward(
        self, x: torch.Tensor, return_mask: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w) -> (B, C, h, w)``: ``x`` plus the transformed context at every
        position (and, with ``return_mask``, the context mask ``(B, 1, h, w)``)."""
        context, mask = self.spatial_pool(x)
        out = x + self.channel_add_conv(context)  # (B, C, 1, 1) broadcast over h, w
        return (out, mask) if return_mask else out


@dataclass
class GCRecord(Record):
    """The context mask of the block.

    Attributes:
        mask: ``(B, 1, h, w)`` softmax over positions, one map per image.
    """

    mask: torch.Tensor


@register
class GCHead(FCNHead):
    """mmseg's ``GCHead``: ``FCNHead(num_convs=2, concat_input=True)`` with a global context
    block after its first conv.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        ratio: Bottleneck ratio of the block's transform (1/4).
        dropout: Dropout before the classifier (0.1).
    """

    name = "gc"
    maps = (
        MapInfo(
            "context",
            "Global context",
            "the context mask, the same map for every query: GC pools one context vector for "
            "the whole image and adds it to every position",
            "context",
            per_query=False,
        ),
    )
    main_map = "context"
    mmseg = MmsegNames("GCHead", ("convs", "conv_cat", "gc_block", "conv_seg"))
    impls = ("explicit",)

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        ratio: float = RATIO,
        dropout: float = 0.1,
    ):
        super().__init__(in_channels, classes, channels, 2, True, dropout)
        self.gc_block = ContextBlock(channels, ratio)

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> GCHead:
        """Options (``config.options``): ``ratio`` (1/4)."""
        options = dict(config.options)
        if unknown := set(options) - {"ratio"}:
            raise ValueError(f"unknown GC head options {sorted(unknown)}; it has: ratio")
        ratio = options.get("ratio", RATIO)
        return cls(in_channels, classes, config.channels, ratio, config.dropout)

    def context(
        self, y: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, GCRecord | None]:
        """The global context block on ``y (B, channels, h, w)``, with its record."""
        if not return_attention:
            return self.gc_block(y), None
        out, mask = self.gc_block(y, return_mask=True)
        return out, GCRecord((y.shape[-2], y.shape[-1]), mask.detach())

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module:
        """The global context block on ``config.channels``."""
        return ContextBlock(config.channels, config.options.get("ratio", RATIO))

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """The global context block on ``N = h * w`` positions, ``C`` channels, ``Cr = int(C *
        ratio)``:

        * affinities: ``N``, the one context mask of an image;
        * attention: the pooling ``c = sum_p a_p x_p``, ``2 N C`` FLOPs; backward twice that;
        * projections: ``conv_mask`` (``C -> 1``), ``2 C`` FLOPs per position, and the
          transform of the pooled vector (``C -> Cr -> C``), ``4 C Cr`` per image (LayerNorm,
          biases and the broadcast add are not counted).

        One implementation (:attr:`impls`). Peak memory: :data:`PEAK` (calibrated on the CPU).
        """
        n, c = batch * h * w, config.channels
        planes = int(c * config.options.get("ratio", RATIO))
        attn = 2 * n * c
        proj = 2 * n * c + batch * 4 * c * planes
        peak = peak_bytes(n * c * BYTES, n * BYTES, PEAK)
        return context_cost(n, n, (attn, 2 * attn), proj, peak)

    # -- what a query sees ----------------------------------------------------------------------

    @classmethod
    def query_maps(cls, record: GCRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``context``: image 0's context mask, whatever the query (renormalised in float64,
        so it sums to one beyond the recorded precision; :meth:`main_maps` of one query)."""
        return {"context": cls.main_maps(record, torch.tensor([fx]), torch.tensor([fy]))[0]}

    @classmethod
    def main_maps(cls, record: GCRecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The context mask for each of ``Q`` cells: one map, the same for every query (the one
        home of its maps: :meth:`query_maps` asks for one query).

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, every row image 0's mask renormalised in float64.
        """
        mask = record.mask[0, 0].double()  # (h, w)
        return (mask / mask.sum()).expand(len(fx), -1, -1).clone()  # (Q, h, w), rows writable

    @classmethod
    def reach(cls, record: GCRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``context``: every cell."""
        return {"context": torch.ones(record.size, dtype=torch.bool)}

    # -- names -----------------------------------------------------------------------------------

    @classmethod
    def mmseg_config(cls, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Channels from ``convs.0``; ratio = the transform's width over the channels."""
        channels = state["decode_head.convs.0.conv.weight"].shape[0]
        planes = state["decode_head.gc_block.channel_add_conv.0.weight"].shape[0]
        ratio = planes / channels
        if int(channels * ratio) != planes:  # mmcv truncates C * ratio: land on planes
            ratio = math.nextafter(ratio, math.inf)
        return {"decoder_channels": channels, "head_options": {"ratio": ratio}}
