"""Segmentation heads beside ISA: the shared context-head base, dense self-attention and FCN.

``DenseAttentionDecoder`` is the non-local baseline: the same ``in_conv``, relation block and
``out_conv`` as the ISA head, but one attention over all ``H * W`` positions (memory ``N^2``).
``FCNHead`` is mmseg's FCN head: the auxiliary head of ISANet (one 3x3 conv) and the
no-attention baseline (two 3x3 convs with the input concatenated).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from isa_explorer.models.inference import concat_conv_bn_relu, inference_active
from isa_explorer.models.layers import AttnImpl, ConvBNReLU, RelationBlock


class ContextHead(nn.Module, ABC):
    """``in_conv`` -> context (defined by subclasses) -> ``out_conv(cat[context, residual])``.

    Subclasses implement :meth:`context`. Parameter names follow mmseg's heads.
    """

    def __init__(
        self, in_channels: int, classes: int, channels: int, dropout: float, attn_impl: AttnImpl
    ):
        super().__init__()
        self.attn_impl = attn_impl
        self.in_conv = ConvBNReLU(in_channels, channels, 3)
        self.out_conv = ConvBNReLU(channels * 2, channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self._capture: dict | None = None

    @abstractmethod
    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, Cin, H, W)`` -> ``(context, residual)``, both ``(B, channels, H, W)``."""

    @contextmanager
    def capture(self):
        """Record the queries/keys of the attention steps during forward passes in the block.

        Yields the dict the head fills (keys documented by each head's :meth:`context`).
        """
        store: dict = {}
        self._capture = store
        try:
            yield store
        finally:
            self._capture = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, channels, H, W)``: the map before dropout and classifier."""
        context, residual = self.context(x)
        # out_conv over cat([context, residual]) without the concatenated copy.
        if inference_active(self):
            return concat_conv_bn_relu(self.out_conv, context, residual)
        c = context.shape[1]
        w = self.out_conv.conv.weight  # (C, 2C, 1, 1): two half-convolutions
        y = F.conv2d(context, w[:, :c]) + F.conv2d(residual, w[:, c:])
        del context, residual
        return self.out_conv.act(self.out_conv.bn(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at feature resolution."""
        return self.conv_seg(self.dropout(self.features(x)))


class DenseAttentionDecoder(ContextHead):
    """Dense (non-local) self-attention head with the ISA head's channels.

    Capture keys: ``dense_q``, ``dense_k`` as maps ``(B, Ck, H, W)``.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        isa_channels: Query/key channels (256).
        dropout: Dropout before the classifier.
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        isa_channels: int = 256,
        dropout: float = 0.1,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__(in_channels, classes, channels, dropout, attn_impl)
        self.relation = RelationBlock(channels, isa_channels)

    def context(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        residual = self.in_conv(x)
        b, c, h, w = residual.shape
        t = residual.flatten(2).transpose(1, 2)  # (B, H*W, C)
        rec = {} if self._capture is not None else None
        t = self.relation(t, self.attn_impl, record=rec)
        if rec is not None:
            for name in ("q", "k"):
                self._capture[f"dense_{name}"] = rec[name].transpose(1, 2).reshape(b, -1, h, w)
        context = t.transpose(1, 2).reshape(b, c, h, w)
        return context, residual


class FCNHead(nn.Module):
    """mmseg's ``FCNHead``: ``num_convs`` 3x3 conv-BN-ReLU, optional input concat, classifier.

    ``FCNHead(1024, classes, 256, num_convs=1)`` is ISANet's auxiliary head on stage 3;
    ``FCNHead(2048, classes, 512, num_convs=2, concat_input=True)`` is the FCN baseline.

    Args:
        in_channels: Input channels.
        classes: Number of classes.
        channels: Hidden channels.
        num_convs: Number of 3x3 conv-BN-ReLU.
        concat_input: Concatenate the input with the convs' output before a 3x3 ``conv_cat``.
        dropout: Dropout before the classifier (0.1).
    """

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 256,
        num_convs: int = 1,
        concat_input: bool = False,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.convs = nn.Sequential(
            *[
                ConvBNReLU(in_channels if i == 0 else channels, channels, 3)
                for i in range(num_convs)
            ]
        )
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3) if concat_input else None
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, channels, H, W)``."""
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at input resolution."""
        return self.conv_seg(self.dropout(self.features(x)))
