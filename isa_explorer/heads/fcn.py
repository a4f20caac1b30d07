"""mmsegmentation's FCN head: no attention, and the shell of mmseg's non-local, criss-cross
and global-context heads.

``FCNHead(1024, classes, 256, num_convs=1)`` is ISANet's auxiliary head on stage 3;
``FCNHead(2048, classes, 512, num_convs=2, concat_input=True)`` is the no-attention
baseline (``head="fcn"``). mmseg's ``NLHead``, ``CCHead`` and ``GCHead`` are this head with a
context step between its first and second conv: they override :meth:`FCNHead.context`.
"""

from __future__ import annotations

import torch
from torch import nn

from isa_explorer.heads.protocol import BYTES, Cost, Head, HeadConfig, MmsegNames, Record
from isa_explorer.heads.registry import register
from isa_explorer.models.layers import ConvBNReLU


@register
class FCNHead(Head):
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

    name = "fcn"
    mmseg = MmsegNames("FCNHead", ("convs", "conv_cat", "conv_seg"))

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

    def context(
        self, y: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, Record | None]:
        """The step between the first conv and the others, ``(B, channels, H, W)`` to the
        same, with the head's record when ``return_attention``: none in the FCN itself."""
        return y, None

    def features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record | None]:
        """``(B, Cin, H, W) -> (B, channels, H, W)``: first conv, context, other convs, concat."""
        y, record = self.context(self.convs[0](x), return_attention)
        y = self.convs[1:](y)
        if self.conv_cat is not None:
            # The convolution of cat[x, y], (B, Cin + channels, H, W), made a band at a time
            # at CPU inference (TokenConv2d).
            y = self.conv_cat((x, y))
        return (y, record) if return_attention else y

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record | None]:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at input resolution (and, with
        ``return_attention``, the context step's record)."""
        if return_attention:
            y, record = self.features(x, True)
            return self.conv_seg(self.dropout(y)), record
        return self.conv_seg(self.dropout(self.features(x)))

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> FCNHead:
        return cls(in_channels, classes, config.channels, 2, True, config.dropout)

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """The baseline's two 3x3 convolutions (on ``C`` channels; ``conv_cat`` reads ``2C``,
        taken as the input's width here): no affinity. Memory: the ``N x C`` maps alive at
        once (input, two conv outputs, their concatenation), kept for backward in training.
        A head with a context step of its own (NL, CC, GC) models its own cost (``None``
        for one that does not)."""
        if cls.context is not FCNHead.context:
            return None
        n, c = batch * h * w, config.channels
        flops = n * 2 * 9 * (c * c + 2 * c * c)
        act = n * c * BYTES
        return Cost(
            n,
            0,
            0,
            flops,
            {"forward": flops, "forward+backward": 3 * flops},
            {"forward": 4 * act, "forward+backward": 8 * act},
        )

    @classmethod
    def mmseg_config(cls, state: dict[str, torch.Tensor]) -> dict[str, int]:
        return {"decoder_channels": state["decode_head.convs.0.conv.weight"].shape[0]}
