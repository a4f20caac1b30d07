"""Building blocks shared by the ISA, dense and FCN heads.

Parameter names follow mmsegmentation (``conv``/``bn`` inside a conv module; ``key_project``,
``query_project``, ``value_project``, ``output_project`` inside a relation block) so released
mmseg checkpoints map onto these modules one to one.

The relation block works on *token* layout ``(batch, length, channels)``: a 1x1 convolution
is a linear layer over the channel dimension, and BatchNorm over ``(B * L, C, 1, 1)`` computes
exactly the statistics BatchNorm2d computes over ``(B, C, H, W)``, so grouping pixels into
attention sequences needs one permutation per step and no transposes around the projections.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["fused", "explicit"]


class ConvBNReLU(nn.Module):
    """Convolution without bias, BatchNorm and ReLU (mmcv ``ConvModule`` with BN and ReLU).

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
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        return self.act(self.bn(self.conv(x)))

    def forward_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """Apply the (1x1) module to tokens ``(B, L, Cin) -> (B, L, Cout)``."""
        assert self.conv.kernel_size == (1, 1), "token layout needs a 1x1 convolution"
        b, n, _ = t.shape
        y = F.linear(t, self.conv.weight.flatten(1))  # (B, L, Cout)
        return self._bn_act(y)

    def forward_token_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """Apply the (1x1) module to tokens split into heads ``(B, h, L, Cin / h) -> (B, L, Cout)``.

        Same result as :meth:`forward_tokens` on the heads side by side along the channels,
        without copying them there: each head meets its slice of the weight in a batched
        matmul that reads it in place, and the products are summed.
        """
        b, h, n, c = heads.shape
        w = self.conv.weight.flatten(1).view(-1, h, c)  # (Cout, h, Cin / h)
        y = torch.bmm(heads[:, 0], w[:, 0].t().expand(b, c, -1))  # (B, L, Cout)
        for i in range(1, h):  # out of place: FlopCounterMode does not count baddbmm_
            y = torch.baddbmm(y, heads[:, i], w[:, i].t().expand(b, c, -1))
        return self._bn_act(y)

    def _bn_act(self, y: torch.Tensor) -> torch.Tensor:
        b, n, _ = y.shape  # (B, L, Cout)
        # BatchNorm over (B*L, C, 1, 1) == BatchNorm2d statistics over (B, C, H, W).
        y = self.bn(y.reshape(b * n, -1, 1, 1)).reshape(b, n, -1)
        return self.act(y)


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
        self.value_project = nn.Conv2d(channels, channels, 1)
        self.output_project = ConvBNReLU(channels, channels)
        self.scale = isa_channels**-0.5

    @staticmethod
    def _project(seq: nn.Sequential, t: torch.Tensor) -> torch.Tensor:
        for m in seq:
            t = m.forward_tokens(t)
        return t

    def query_key(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys ``(B, L, isa_channels)`` of tokens ``t (B, L, channels)``."""
        return self._project(self.query_project, t), self._project(self.key_project, t)

    def forward(
        self, t: torch.Tensor, impl: AttnImpl = "fused", record: dict | None = None
    ) -> torch.Tensor:
        """Tokens ``(B, L, C)`` -> attended and projected tokens ``(B, L, C)``.

        When ``record`` is a dict, the detached queries and keys are stored in it as
        ``"q"`` and ``"k"`` (``(B, L, isa_channels)``).
        """
        q, k = self.query_key(t)
        if record is not None:
            record["q"], record["k"] = q.detach(), k.detach()
        v = F.linear(t, self.value_project.weight.flatten(1), self.value_project.bias)  # (B, L, C)
        if impl == "fused":  # the output projection reads the value heads where they are
            heads = fused_attention_heads(q, k, v, self.scale)  # (B, h, L, C / h)
            del q, k, v
            return self.output_project.forward_token_heads(heads)
        context = attention(q, k, v, self.scale, impl)
        del q, k, v
        return self.output_project.forward_tokens(context)
