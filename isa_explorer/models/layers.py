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

from isa_explorer.models.inference import (
    conv_bn_relu,
    folded_linear,
    inference_active,
    linear_over_heads,
)

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
        if inference_active(self):  # BN applied in place; large inputs in row bands
            return conv_bn_relu(self, x)
        return self.act(self.bn(self.conv(x)))

    def forward_tokens(self, t: torch.Tensor) -> torch.Tensor:
        """Apply the (1x1) module to tokens ``(B, L, Cin) -> (B, L, Cout)``."""
        assert self.conv.kernel_size == (1, 1), "token layout needs a 1x1 convolution"
        y = F.linear(t, self.conv.weight.flatten(1))  # (B, L, Cout)
        return self._bn_act(y)

    def forward_token_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """Apply the (1x1) module to tokens split into heads ``(B, h, L, Cin / h) -> (B, L, Cout)``.

        Same result as :meth:`forward_tokens` on the heads side by side along the channels,
        without copying them there (:func:`~isa_explorer.models.inference.linear_over_heads`).
        """
        return self._bn_act(linear_over_heads(heads, self.conv.weight.flatten(1)))

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

    def inference_weights(self) -> dict[str, torch.Tensor]:
        """The block's weights for :meth:`infer`, with every BatchNorm folded (eval mode).

        ``qkv``/``qkv_bias``: the first query and key projections and the value projection
        stacked into one ``(2 Ck + C, C)`` map, since all three read the same tokens;
        ``q2``, ``k2``, ``out`` (and ``*_bias``): the second projections and the output one.
        """
        (q1, q1b), (q2, q2b) = (folded_linear(m) for m in self.query_project)
        (k1, k1b), (k2, k2b) = (folded_linear(m) for m in self.key_project)
        out, out_b = folded_linear(self.output_project)
        v, vb = self.value_project.weight.flatten(1), self.value_project.bias
        return {
            "qkv": torch.cat([q1, k1, v]),
            "qkv_bias": torch.cat([q1b, k1b, vb]),
            "q2": q2,
            "q2_bias": q2b,
            "k2": k2,
            "k2_bias": k2b,
            "out": out,
            "out_bias": out_b,
        }

    def infer(self, t: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused forward in eval mode without autograd: tokens ``(B, L, C) -> (B, L, C)``.

        Equal to ``self(t, "fused")`` up to fp32 rounding, with one product for the first
        query/key projections and the values and no separate BatchNorm passes.

        Args:
            t: Tokens ``(B, L, C)``.
            weights: :meth:`inference_weights` (computed once per forward, not per call).
        """
        ck = self.isa_channels
        y = F.linear(t, weights["qkv"], weights["qkv_bias"])  # (B, L, 2 Ck + C): q1 | k1 | v
        y[..., : 2 * ck].relu_()
        q = F.linear(y[..., :ck], weights["q2"], weights["q2_bias"]).relu_()  # (B, L, Ck)
        k = F.linear(y[..., ck : 2 * ck], weights["k2"], weights["k2_bias"]).relu_()
        heads = fused_attention_heads(q, k, y[..., 2 * ck :], self.scale)  # (B, h, L, C / h)
        del y, q, k
        return linear_over_heads(heads, weights["out"], weights["out_bias"]).relu_()
