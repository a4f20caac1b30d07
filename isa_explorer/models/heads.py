"""Segmentation heads beside ISA: the shared context-head base, dense self-attention and FCN.

``DenseAttentionDecoder`` is the non-local baseline: the same ``in_conv``, relation block and
``out_conv`` as the ISA head, but one attention over all ``H * W`` positions (memory ``N^2``).
``FCNHead`` is mmseg's FCN head: the auxiliary head of ISANet (one 3x3 conv) and the
no-attention baseline (two 3x3 convs with the input concatenated).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from isa_explorer.models.fusion import refuse_training_if_fused
from isa_explorer.models.layers import AttnImpl, ConvBNReLU, RelationBlock

#: Input bytes of one band of ``out_conv`` at inference: the band's concatenation, its copy
#: in the CPU backend's blocked layout and its output live at once (4 MiB: 4 rows of
#: 2 x 512 channels x 256 positions).
POINTWISE_BAND_BYTES = 4 * 2**20

#: What a context head returns with ``return_attention=True``: its queries and keys as maps
#: (and, for ISA, the ``grid``). Keys are documented by each head.
Attention = dict


class ContextHead(nn.Module, ABC):
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

    def train(self, mode: bool = True) -> ContextHead:
        refuse_training_if_fused(self, mode)  # before any submodule changes mode
        return super().train(mode)

    @abstractmethod
    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Attention | None]:
        """``(B, Cin, H, W)`` -> ``(context, residual, attention)``.

        ``context`` and ``residual`` are ``(B, channels, H, W)``; ``attention`` is the dict of
        queries and keys when ``return_attention``, else ``None``.
        """

    def features(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Attention]:
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
    ) -> torch.Tensor | tuple[torch.Tensor, Attention]:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at feature resolution.

        With ``return_attention=True``: ``(logits, attention)``, the queries and keys of the
        attention steps as documented by the head (detached).
        """
        if return_attention:
            y, attn = self.features(x, True)
            return self.conv_seg(self.dropout(y)), attn
        return self.conv_seg(self.dropout(self.features(x)))


def _pointwise_in_bands(layer: nn.Module, *maps: torch.Tensor) -> torch.Tensor:
    """``layer(torch.cat(maps, 1))`` for a 1x1 ``layer`` at inference, a band of rows at a time.

    Only one band of the concatenation exists at a time (:data:`POINTWISE_BAND_BYTES`), not
    the whole ``(B, 2C, H, W)`` copy beside its inputs: at 128x256 with 512 channels the head's
    peak stays near the attention phase's 192 MiB instead of 256. The numbers are the same
    (each output position reads its own input position only). Forward hooks on ``layer`` fire
    once per band.
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


def dense_context(
    relation: nn.Module, residual: torch.Tensor, impl: AttnImpl, return_attention: bool
) -> tuple[torch.Tensor, Attention | None]:
    """One attention over all ``H * W`` positions of ``residual (B, C, H, W)``.

    ``relation`` is a relation block (plain or fused for inference). Returns the context
    ``(B, C, H, W)`` and, when asked, ``{"dense_q", "dense_k"}`` maps ``(B, Ck, H, W)``.
    """
    b, c, h, w = residual.shape
    t = residual.flatten(2).transpose(1, 2)  # (B, H*W, C)
    if not return_attention:
        return relation(t, impl).transpose(1, 2).reshape(b, c, h, w), None
    t, q, k = relation(t, impl, return_qk=True)
    attn = {f"dense_{n}": v.transpose(1, 2).reshape(b, -1, h, w) for n, v in (("q", q), ("k", k))}
    return t.transpose(1, 2).reshape(b, c, h, w), attn


class DenseAttentionDecoder(ContextHead):
    """Dense (non-local) self-attention head with the ISA head's channels.

    Attention keys (``return_attention=True``): ``dense_q``, ``dense_k`` as maps
    ``(B, Ck, H, W)``.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        isa_channels: Query/key channels (256).
        dropout: Dropout before the classifier.
        attn_impl: ``"fused"``, ``"explicit"`` or ``"auto"``.
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

    def context(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Attention | None]:
        residual = self.in_conv(x)
        context, attn = dense_context(self.relation, residual, self.attn_impl, return_attention)
        return context, residual, attn


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

    def train(self, mode: bool = True) -> FCNHead:
        refuse_training_if_fused(self, mode)  # before any submodule changes mode
        return super().train(mode)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, channels, H, W)``."""
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits at input resolution."""
        return self.conv_seg(self.dropout(self.features(x)))
