"""The shell of ISA's head, shared with its dense ablation: ``in_conv`` -> context ->
``out_conv(cat[context, residual])`` -> dropout -> classifier (mmseg's ``ISAHead`` layout)."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from isa_explorer.heads.protocol import Head, HeadConfig, Record
from isa_explorer.models.layers import AttnImpl, ConvBNReLU

#: Input bytes of one band of ``out_conv`` at inference: the band's concatenation, its copy
#: in the CPU backend's blocked layout and its output live at once (4 MiB: 4 rows of
#: 2 x 512 channels x 256 positions).
POINTWISE_BAND_BYTES = 4 * 2**20


class ContextHead(Head):
    """``in_conv`` -> context (defined by subclasses) -> ``out_conv(cat[context, residual])``.

    Subclasses implement :meth:`context`. Parameter names follow mmseg's heads. Nothing is
    stored on the module during a forward pass: the queries and keys of the attention steps
    come back as a return value when asked for (``return_attention=True``), so one head can
    serve several threads at once.
    """

    def __init__(
        self, in_channels: int, classes: int, channels: int, dropout: float, attn_impl: AttnImpl
    ):
        super().__init__()
        self.attn_impl = attn_impl
        # Their outputs are copied (token layout, cat) or dropped out, not saved: masks suffice.
        self.in_conv = ConvBNReLU(in_channels, channels, 3, mask_relu=True)
        self.out_conv = ConvBNReLU(channels * 2, channels, 1, mask_relu=True)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    @abstractmethod
    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Record | None]:
        """``(B, Cin, H, W)`` -> ``(context, residual, attention)``.

        ``context`` and ``residual`` are ``(B, channels, H, W)``; ``attention`` is the head's
        :class:`~isa_explorer.heads.protocol.Record` when ``return_attention``, else ``None``.
        """

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module:
        """The context step alone: ``in_conv`` is the identity, ``out_conv`` and the
        classifier are dropped."""
        return _ContextStep(cls.build(config.channels, 1, config))

    def features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record]:
        """``(B, Cin, H, W) -> (B, channels, H, W)``: the map before dropout and classifier."""
        context, residual, attn = self.context(x, return_attention)
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            both = torch.cat([context, residual], dim=1)  # (B, 2C, H, W)
            del context, residual  # freed before out_conv runs
            y = self.out_conv(both)  # (B, C, H, W)
        else:
            y = _pointwise_in_bands(self.out_conv, context, residual)
        return (y, attn) if return_attention else y

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Record]:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at feature resolution.

        With ``return_attention=True``: ``(logits, record)``, the head's record of its
        attention (detached).
        """
        if return_attention:
            y, attn = self.features(x, True)
            return self.conv_seg(self.dropout(y)), attn
        return self.conv_seg(self.dropout(self.features(x)))


class _ContextStep(nn.Module):
    """:meth:`ContextHead.context` of ``head`` on its input: ``(B, C, h, w) -> (B, C, h, w)``."""

    def __init__(self, head: ContextHead):
        super().__init__()
        head.in_conv = nn.Identity()
        del head.out_conv, head.conv_seg
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.context(x)[0]


def _pointwise_in_bands(layer: nn.Module, *maps: torch.Tensor) -> torch.Tensor:
    """``layer(torch.cat(maps, 1))`` for a 1x1 ``layer`` at inference, a band of rows at a time.

    Only one band of the concatenation exists at a time (:data:`POINTWISE_BAND_BYTES`), not
    the whole ``(B, 2C, H, W)`` copy beside its inputs: at 128x256 with 512 channels the head's
    peak stays near the attention phase's 192 MiB instead of 256. The numbers are the same
    (each output position reads its own input position only). Forward hooks on ``layer`` fire
    once per band. Unlike :class:`~isa_explorer.models.layers.TokenConv2d`'s banded
    concatenation (the 3x3 ``conv_cat`` of the FCN-style heads), the whole layer runs per band,
    BatchNorm and ReLU included, so no whole pre-BatchNorm map exists either.
    """
    b, _, h, w = maps[0].shape
    per_row = b * sum(m.shape[1] for m in maps) * w * maps[0].element_size()  # bytes
    rows = max(1, POINTWISE_BAND_BYTES // per_row)
    out = None
    for r0 in range(0, h, rows):
        y = layer(torch.cat([m[:, :, r0 : r0 + rows] for m in maps], dim=1))  # (B, Cout, r, W)
        if out is None:
            out = y.new_empty(b, y.shape[1], h, w)
        out[:, :, r0 : r0 + rows] = y
    return out
