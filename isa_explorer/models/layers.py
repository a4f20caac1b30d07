"""Building blocks shared by the ISA, dense and FCN heads.

Parameter names follow mmsegmentation (``conv``/``bn`` inside a conv module; ``key_project``,
``query_project``, ``value_project``, ``output_project`` inside a relation block) so released
mmseg checkpoints map onto these modules one to one.

The relation block works on *token* layout ``(batch, length, channels)``. Its 1x1 convolutions
are :class:`TokenConv2d`: an ``nn.Conv2d`` that applies itself to tokens as the linear map it
is, and BatchNorm over ``(B * L, C, 1, 1)`` computes exactly the statistics BatchNorm2d
computes over ``(B, C, H, W)``. So grouping pixels into attention sequences needs one
permutation per step, and every layer still runs through its module's ``__call__``: forward
hooks (feature extraction, captum) fire on each of them. On tokens a hook sees ``(B, L, C)``
at a convolution and ``(B * L, C, 1, 1)`` at a BatchNorm.

These are the modules for training and analysis. For fast inference,
:func:`isa_explorer.models.prepare.prepare_for_inference` folds the BatchNorms and swaps in
the modules of :mod:`isa_explorer.models.inference`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["fused", "explicit"]


class TokenConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that also takes tokens: 1x1 on ``(B, L, Cin)`` is ``F.linear``.

    On a 4-D map it is the plain convolution. On a 3-D token tensor (1x1 kernels only) it
    returns ``(B, L, Cout)``, the same numbers a 1x1 convolution of the map would give.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return super().forward(x)
        if self.kernel_size != (1, 1) or self.groups != 1:
            raise ValueError("token layout needs a 1x1 convolution without groups")
        return F.linear(x, self.weight.flatten(1), self.bias)  # (B, L, Cout)


class ConvBNReLU(nn.Module):
    """Convolution without bias, BatchNorm and ReLU (mmcv ``ConvModule`` with BN and ReLU).

    Takes a map ``(B, Cin, H, W)`` or, for a 1x1 kernel, tokens ``(B, L, Cin)``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size.
        dilation: Dilation of the convolution.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ):
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = TokenConv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, Cout, H, W)``, or tokens ``(B, L, Cin) -> (B, L, Cout)``."""
        y = self.conv(x)
        if y.dim() == 3:
            b, n, c = y.shape
            # BatchNorm over (B*L, C, 1, 1) == BatchNorm2d statistics over (B, C, H, W).
            return self.act(self.bn(y.reshape(b * n, c, 1, 1)).view(b, n, c))
        return self.act(self.bn(y))


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: AttnImpl = "fused"
) -> torch.Tensor:
    """Softmax attention of ``q (B, L, Ck)`` over ``k (B, L, Ck)``, ``v (B, L, Cv)``.

    ``fused`` calls ``F.scaled_dot_product_attention`` (see :func:`fused_attention_heads`).
    ``explicit`` materialises the ``(B, L, L)`` affinity matrix.

    Returns:
        Context ``(B, L, Cv)``.
    """
    if impl == "explicit":
        attn = torch.bmm(q * scale, k.transpose(1, 2))  # (B, L, L)
        attn = attn.softmax(dim=-1)
        return torch.bmm(attn, v)
    if impl != "fused":
        raise ValueError(f"unknown attention implementation {impl!r}: use 'fused' or 'explicit'")
    return _merge_heads(fused_attention_heads(q, k, v, scale))


def fused_attention_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the values as heads: ``(B, Cv / Ck, L, Ck)``.

    The CPU flash kernel (and the GPU flash kernel) needs one head dimension for q, k and v.
    When ``Cv`` is a multiple of ``Ck`` the values are viewed as ``Cv / Ck`` heads of ``Ck``
    channels that share q and k (expanded, not copied): the softmax weights are the same for
    every head, so the heads side by side are the exact context. No copy of q, k or v is made.
    Otherwise the result has one head of ``Cv`` channels.
    """
    b, n, ck = q.shape
    cv = v.shape[-1]
    if cv == ck or cv % ck:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)[:, None]  # (B, 1, L, Cv)
    h = cv // ck
    vh = v.view(b, n, h, ck).transpose(1, 2)  # (B, h, L, Ck), a view
    qh, kh = q[:, None].expand(b, h, n, ck), k[:, None].expand(b, h, n, ck)
    return F.scaled_dot_product_attention(qh, kh, vh, scale=scale)


def _merge_heads(o: torch.Tensor) -> torch.Tensor:
    """``(B, h, L, Ck) -> (B, L, h * Ck)``, heads side by side along the channels."""
    b, h, n, ck = o.shape
    return o.transpose(1, 2).reshape(b, n, h * ck)


class RelationBlock(nn.Module):
    """Self-attention block of mmseg's ISA head (``_SelfAttentionBlock`` + output projection).

    key/query: two 1x1 conv-BN-ReLU each; value: one 1x1 conv with bias; affinity scale
    ``isa_channels ** -0.5``; output: 1x1 conv-BN-ReLU. Attention runs independently inside
    each sequence of the token batch.

    Args:
        channels: Channels of the input and output (``channels`` of the head).
        isa_channels: Channels of queries and keys.
    """

    def __init__(self, channels: int, isa_channels: int):
        super().__init__()
        self.isa_channels = isa_channels
        self.key_project = nn.Sequential(
            ConvBNReLU(channels, isa_channels), ConvBNReLU(isa_channels, isa_channels)
        )
        self.query_project = nn.Sequential(
            ConvBNReLU(channels, isa_channels), ConvBNReLU(isa_channels, isa_channels)
        )
        self.value_project = TokenConv2d(channels, channels, 1)
        self.output_project = ConvBNReLU(channels, channels)
        self.scale = isa_channels**-0.5

    def forward(
        self, t: torch.Tensor, impl: AttnImpl = "fused", return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``(B, L, C)`` -> attended and projected tokens ``(B, L, C)``.

        Args:
            t: Tokens ``(B, L, C)``.
            impl: ``"fused"`` or ``"explicit"`` attention (:func:`attention`).
            return_qk: Also return the detached queries and keys, ``(B, L, isa_channels)``.

        Returns:
            The tokens, or ``(tokens, queries, keys)`` when ``return_qk``.
        """
        q, k = self.query_project(t), self.key_project(t)  # (B, L, Ck) each
        v = self.value_project(t)  # (B, L, C)
        out = self.output_project(attention(q, k, v, self.scale, impl))
        return (out, q.detach(), k.detach()) if return_qk else out
