"""The layers of a head prepared for inference: BatchNorm folded, fewer copies.

In eval mode BatchNorm is a fixed per-channel affine map, so
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval` folds it into the convolution before it, once,
when the model is prepared (:func:`isa_explorer.models.prepare.prepare_for_inference`). The
modules here then run that folded model with fewer copies of the activations:

* :class:`ConvReLU` -- a conv-BN-ReLU with BN folded; a large 3x3 input runs in bands of
  output rows, so the CPU backend (oneDNN) copies one band of the input into its blocked layout
  at a time instead of the whole input (a 268 MiB copy for a 2048-channel 128x256 map);
* :class:`ConcatConvReLU` -- ``out_conv`` over ``cat([context, residual])`` as two half
  products accumulated in place, without the concatenated copy;
* :class:`PreparedRelation` -- a relation block with its first query and key projections and
  its value projection stacked into one product, since all three read the same tokens.

Every module gives the original module's result up to fp32 rounding (``tests/test_inference.py``).
They are for inference only: no BatchNorm statistics to update, no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from isa_explorer.models.layers import (
    AttnImpl,
    ConvBNReLU,
    RelationBlock,
    attention,
    fused_attention_heads,
)

#: Input bytes of one band of a banded convolution (16 MiB: 8 rows of a 2048 x 256 map).
BAND_BYTES = 16 * 2**20


def fold(m: ConvBNReLU) -> nn.Conv2d:
    """The convolution of an eval-mode conv-BN(-ReLU) with the BatchNorm folded into it."""
    return fuse_conv_bn_eval(m.conv.eval(), m.bn.eval())


class ConvReLU(nn.Module):
    """``relu(conv(x))`` with BatchNorm folded into ``conv``; large inputs in row bands.

    Args:
        conv: The folded convolution (stride 1, ``padding = dilation * (k // 2)``).
        band_bytes: Input bytes per band (:data:`BAND_BYTES` when ``None``); inputs up to twice
            this, and 1x1 kernels, run in one call.

    Shapes:
        ``(B, Cin, H, W) -> (B, Cout, H, W)``; a 1x1 ``conv`` also takes tokens ``(B, L, Cin)``.
    """

    def __init__(self, conv: nn.Conv2d, band_bytes: int | None = None):
        super().__init__()
        self.conv = conv
        self.band_bytes = BAND_BYTES if band_bytes is None else band_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.dim() == 3 or conv.kernel_size == (1, 1):
            return conv(x).relu_()
        b, cin, h, w = x.shape
        rows = max(1, self.band_bytes // (b * cin * w * x.element_size()))
        if h <= 2 * rows:
            return conv(x).relu_()
        pad = conv.padding[0]  # rows of context above and below every output row
        out = x.new_empty(b, conv.out_channels, h, w)
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            a, z = max(r0 - pad, 0), min(r1 + pad, h)  # input rows the band reads
            band = F.pad(x[:, :, a:z], (0, 0, pad - (r0 - a), pad - (z - r1)))  # zero borders
            y = F.conv2d(band, conv.weight, conv.bias, 1, (0, conv.padding[1]), conv.dilation)
            out[:, :, r0:r1] = y.relu_()  # (B, Cout, r1 - r0, W)
        return out


class ConcatConvReLU(nn.Module):
    """``relu(conv(cat([context, residual])))`` for a folded 1x1 conv, without the concatenation.

    The two halves of the weight multiply the two inputs as position x channel matrices read
    in place, the second product accumulating into the first; only the output is allocated.

    Args:
        conv: The folded 1x1 convolution over ``2 C`` channels (``out_conv`` of a context head).

    Shapes:
        ``(B, C, H, W), (B, C, H, W) -> (B, Cout, H, W)``, stored channels-last; any input
        memory layout.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        weight, shift = self.conv.weight.flatten(1), self.conv.bias  # (Cout, 2C), (Cout,)
        # Products into ``out=`` are not autocast: under autocast they run in the inputs' dtype.
        weight, shift = weight.to(context.dtype), shift.to(context.dtype)
        b, c, h, w = context.shape
        y = context.new_empty(b, h, w, weight.shape[0])  # (B, H, W, Cout)
        for i in range(b):
            rows = y[i].view(h * w, -1)  # (H * W, Cout)
            torch.addmm(shift, _position_rows(context[i]), weight[:, :c].t(), out=rows)
            rows.addmm_(_position_rows(residual[i]), weight[:, c:].t())
        return y.relu_().permute(0, 3, 1, 2)  # (B, Cout, H, W), channels-last


def _position_rows(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W) -> (H * W, C)``: a view for channel-first and channels-last storage."""
    c = x.shape[0]
    nhwc = x.permute(1, 2, 0)  # (H, W, C)
    if nhwc.is_contiguous():
        return nhwc.view(-1, c)
    return x.reshape(c, -1).t()  # a view of contiguous (C, H, W); a copy of a cropped map


def linear_over_heads(
    heads: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """A linear map of tokens split into heads, ``(B, h, L, Cin / h) -> (B, L, Cout)``.

    Same result as ``F.linear`` on the heads side by side along the channels, without copying
    them there: each head meets its slice of the weight in a batched matmul that reads it in
    place, and the products are summed.
    """
    b, h, n, c = heads.shape
    w = weight.view(-1, h, c)  # (Cout, h, Cin / h)
    if bias is None:
        y = torch.bmm(heads[:, 0], w[:, 0].t().expand(b, c, -1))  # (B, L, Cout)
    else:
        y = torch.baddbmm(bias.expand(b, n, -1), heads[:, 0], w[:, 0].t().expand(b, c, -1))
    for i in range(1, h):  # out of place: FlopCounterMode does not count baddbmm_
        y = torch.baddbmm(y, heads[:, i], w[:, i].t().expand(b, c, -1))
    return y


class PreparedRelation(nn.Module):
    """A :class:`~isa_explorer.models.layers.RelationBlock` with every BatchNorm folded.

    Modules: ``qkv`` (the first query and key projections and the value projection stacked,
    ``C -> 2 Ck + C``), ``query2`` and ``key2`` (the second projections, ``Ck -> Ck``) and
    ``output`` (``C -> C``), all linear maps over tokens followed by ReLU except the values.

    Args:
        block: The eval-mode relation block to fold.

    Shapes:
        Tokens ``(B, L, C) -> (B, L, C)``, as the block's forward.
    """

    def __init__(self, block: RelationBlock):
        super().__init__()
        q1, q2 = (fold(m) for m in block.query_project)
        k1, k2 = (fold(m) for m in block.key_project)
        v = block.value_project
        self.isa_channels, self.scale = block.isa_channels, block.scale
        channels = v.in_channels
        self.qkv = _linear(
            torch.cat([q1.weight, k1.weight, v.weight]), torch.cat([q1.bias, k1.bias, v.bias])
        )
        self.query2, self.key2 = _linear(q2.weight, q2.bias), _linear(k2.weight, k2.bias)
        out = fold(block.output_project)
        self.output = _linear(out.weight, out.bias)
        assert self.qkv.out_features == 2 * self.isa_channels + channels

    def forward(
        self, t: torch.Tensor, impl: AttnImpl = "fused", return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``(B, L, C)`` -> ``(B, L, C)`` (and the queries and keys when asked).

        For a whole map: the projections run one after the other (slices of ``qkv``), so
        only one first-stage projection is alive at a time.
        """
        return self._attend(list(self._whole_map_qkv(t)), impl, return_qk)

    def _whole_map_qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ck = self.isa_channels
        w, b = self.qkv.weight, self.qkv.bias
        q = self.query2(F.linear(t, w[:ck], b[:ck]).relu_()).relu_()  # (B, L, Ck)
        k = self.key2(F.linear(t, w[ck : 2 * ck], b[ck : 2 * ck]).relu_()).relu_()
        return q, k, F.linear(t, w[2 * ck :], b[2 * ck :])  # v: (B, L, C)

    def chunk(
        self, t: torch.Tensor, return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` (fused) for a chunk of a streamed step: one product for q1, k1, v."""
        ck = self.isa_channels
        y = self.qkv(t)  # (B, L, 2 Ck + C): q1 | k1 | v
        y[..., : 2 * ck].relu_()
        q = self.query2(y[..., :ck]).relu_()  # (B, L, Ck)
        k = self.key2(y[..., ck : 2 * ck]).relu_()
        qkv = [q, k, y[..., 2 * ck :]]
        del q, k, y
        return self._attend(qkv, "fused", return_qk)

    def _attend(
        self, qkv: list[torch.Tensor], impl: AttnImpl, return_qk: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention and output projection of ``[q, k, v]``.

        The list is emptied so that q, k and v are freed before the output projection (an
        argument tuple would keep them alive until the call returns: +2 C per position).
        """
        q, k, v = qkv
        qkv.clear()
        qk = (q, k) if return_qk else None
        # Inference: "auto" is the fused path (layers.choose_impl). The output projection
        # reads the value heads where they are.
        if impl in ("fused", "auto"):
            heads = fused_attention_heads(q, k, v, self.scale)  # (B, h, L, C / h)
            del q, k, v
            out = linear_over_heads(heads, self.output.weight, self.output.bias).relu_()
        else:
            context = attention(q, k, v, self.scale, impl)
            del q, k, v
            out = self.output(context).relu_()
        return out if qk is None else (out, *qk)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` holding a (folded) 1x1 convolution's weight ``(Cout, Cin[, 1, 1])``."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight.flatten(1))
        lin.bias.copy_(bias)
    return lin
