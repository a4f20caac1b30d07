"""Inference fast paths of the heads' layers: eval mode with gradients off.

In eval mode BatchNorm is a fixed per-channel affine map ``y * scale + shift``, so it can be
folded into the convolution before it or applied in place, instead of writing a second copy of
every activation. Large 3x3 convolutions run in bands of output rows, so the CPU backend
(oneDNN) copies one band of the input into its blocked layout at a time instead of the whole
input (a 268 MiB copy for a 2048-channel 128x256 map). Nothing here changes a parameter or
the ``state_dict``; every function gives the module's own forward result up to fp32 rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from isa_explorer.models.layers import ConvBNReLU

#: Input bytes of one band of a banded convolution (16 MiB: 8 rows of a 2048 x 256 map).
BAND_BYTES = 16 * 2**20


def inference_active(module: nn.Module) -> bool:
    """True when ``module`` is in eval mode, autograd is off, autocast is not active and no
    forward hook is registered on it or its submodules.

    Otherwise the modules' own forward runs: autocast picks each operator's dtype, which the
    preallocated outputs of the fast paths cannot follow, and the fast paths call no submodule,
    so a hook (feature extraction, captum) would silently never fire.
    """
    if module.training or torch.is_grad_enabled():
        return False
    if any(torch.is_autocast_enabled(device) for device in ("cpu", "cuda")):
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(C,)``, of an eval-mode BatchNorm: ``bn(y) == y * scale + shift``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def folded_linear(m: ConvBNReLU) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv-BN as one linear map: weight ``(Cout, Cin)`` and bias ``(Cout,)`` (eval mode)."""
    scale, shift = bn_affine(m.bn)
    return m.conv.weight.flatten(1) * scale[:, None], shift


def affine_relu_(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(y * scale + shift)`` in place over the channels of ``y (B, C, H, W)``."""
    return y.mul_(scale[:, None, None]).add_(shift[:, None, None]).relu_()


def conv_bn_relu(m: ConvBNReLU, x: torch.Tensor, band_bytes: int | None = None) -> torch.Tensor:
    """``m(x)`` in eval mode without a second copy of the output, in row bands when ``x`` is large.

    Args:
        m: The conv-BN-ReLU module (stride 1, ``padding = dilation * (k // 2)``).
        x: Input ``(B, Cin, H, W)``.
        band_bytes: Input bytes per band (:data:`BAND_BYTES` when ``None``); inputs up to
            twice this run in one call.

    Returns:
        ``(B, Cout, H, W)``, equal to ``m(x)`` up to fp32 rounding.
    """
    band_bytes = BAND_BYTES if band_bytes is None else band_bytes
    conv = m.conv
    scale, shift = bn_affine(m.bn)
    b, cin, h, w = x.shape
    row_bytes = b * cin * w * x.element_size()
    rows = max(1, band_bytes // row_bytes)
    if h <= 2 * rows:
        return affine_relu_(conv(x), scale, shift)
    pad = conv.padding[0]  # rows of context above and below every output row
    out = x.new_empty(b, conv.out_channels, h, w)
    for r0 in range(0, h, rows):
        r1 = min(r0 + rows, h)
        a, z = max(r0 - pad, 0), min(r1 + pad, h)  # input rows the band reads
        band = F.pad(x[:, :, a:z], (0, 0, pad - (r0 - a), pad - (z - r1)))  # zero rows at borders
        y = F.conv2d(band, conv.weight, None, 1, (0, conv.padding[1]), conv.dilation)
        out[:, :, r0:r1] = affine_relu_(y, scale, shift)  # (B, Cout, r1 - r0, W)
    return out


def concat_conv_bn_relu(
    m: ConvBNReLU, context: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``m(cat([context, residual]))`` for a 1x1 conv-BN-ReLU, without the concatenation.

    The two halves of the weight (BatchNorm folded in) multiply the two inputs as position x
    channel matrices read in place, the second product accumulating into the first; only the
    output is allocated.

    Args:
        m: The 1x1 conv-BN-ReLU over ``2 C`` channels (``out_conv`` of a context head).
        context: ``(B, C, H, W)``, any memory layout.
        residual: ``(B, C, H, W)``, any memory layout.

    Returns:
        ``(B, Cout, H, W)``, stored channels-last.
    """
    weight, shift = folded_linear(m)  # (Cout, 2C), (Cout,)
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
