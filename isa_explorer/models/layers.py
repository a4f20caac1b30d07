"""Building blocks shared by the heads.

Parameter names follow mmsegmentation (``conv``/``bn``; ``key_project``, ``query_project``,
``value_project``, ``output_project``), so released mmseg checkpoints map on one to one.

The relation block works on tokens ``(B, L, C)``: its 1x1 convolutions are
:class:`TokenConv2d` (the linear map on tokens), and BatchNorm over ``(B * L, C, 1, 1)`` has
exactly BatchNorm2d's statistics over ``(B, C, H, W)``. Grouping pixels into sequences costs
one permutation per step, and every layer runs through its module's ``__call__``: forward hooks
fire on each, seeing ``(B, L, C)`` at a convolution and ``(B * L, C, 1, 1)`` at a BatchNorm.
Inference: :func:`~isa_explorer.models.fusion.fuse_for_inference` folds each BatchNorm into its
convolution in place. Training memory: :mod:`isa_explorer.models.checkpointing`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["fused", "explicit", "auto"]
#: Why a fused model (:func:`isa_explorer.models.fusion.fuse_for_inference`) refuses training.
FUSED_MODEL = (
    "this model is fused for inference (BatchNorm folded into the convolutions) and cannot be "
    "trained or saved: load it again without for_inference=True"
)


def choose_impl(q: torch.Tensor, v: torch.Tensor) -> str:
    """What ``impl="auto"`` runs for ``q (B, L, Ck)``, ``v (B, L, Cv)``, chosen by measurement.

    ``"explicit"`` for a CPU training step with ``L <= Cv`` (ISA up to 128x256 feature maps):
    the explicit softmax and its backward beat the CPU flash kernel's backward (zeroed gradient
    buffers, expanded heads summed) by 3-4 % of the head's step (``results/peer_cpu.json``).
    ``"fused"`` elsewhere: inference, GPUs, and long sequences (``L x L`` affinities).
    """
    training = torch.is_grad_enabled() and (q.requires_grad or v.requires_grad)
    short = q.shape[-2] <= v.shape[-1]
    return "explicit" if training and short and q.device.type == "cpu" else "fused"


#: Input bytes of one band of a banded convolution (16 MiB: 8 rows of a 2048 x 256 map).
BAND_BYTES = 16 * 2**20


class TokenConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that also takes tokens, or maps to concatenate.

    * A map ``(B, Cin, H, W)``: the plain convolution.
    * Tokens ``(B, L, Cin)`` (1x1 only): ``F.linear``, ``(B, L, Cout)``, the numbers a 1x1
      convolution of the map gives.
    * A tuple of maps ``(B, C_i, H, W)`` with ``sum C_i = Cin``: the convolution of their
      channel concatenation (the FCN-style ``conv_cat(cat[x, y])`` of mmseg's heads).

    At CPU inference (no autograd, not compiled) a large input runs in bands of output rows:
    oneDNN copies its input into a blocked layout, one band (:data:`BAND_BYTES`) at a time
    instead of all 268 MiB of ``in_conv``'s 2048-channel 128x256 input, whose peak goes from
    ~375 to ~146 MiB at unchanged time (``docs/benchmarks.md``). A tuple of maps is
    concatenated one band at a time too, so the 320 MiB ``cat[x, y]`` of a 2560-channel
    128x256 ``conv_cat`` never exists whole: measured alone, a peak RSS of 1250 against
    1830 MiB for ``torch.cat`` then ``F.conv2d``, at 3-10% more time; in the heads, 0.36-0.59x
    mmseg's inference memory instead of 0.74-0.78x (``docs/benchmarks.md``, "Each head
    against mmsegmentation"). Forward hooks see the whole input (the tuple, for maps to
    concatenate) and the whole output.
    """

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        maps = x if isinstance(x, tuple) else (x,)
        if maps[0].dim() == 3:
            if len(maps) > 1 or self.kernel_size != (1, 1) or self.groups != 1:
                raise ValueError(
                    "token layout needs one input and a 1x1 convolution without groups"
                )
            return F.linear(maps[0], self.weight.flatten(1), self.bias)  # (B, L, Cout)
        banded = (
            (self.kernel_size != (1, 1) or len(maps) > 1)
            and maps[0].device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and self.stride == (1, 1)
            and self.groups == 1
            and 2 * self.padding[0] == self.dilation[0] * (self.kernel_size[0] - 1)
        )
        return self._in_bands(maps) if banded else super().forward(_joined(maps))

    def _in_bands(self, maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The convolution of ``cat(maps, 1)``, each ``(B, C_i, H, W)`` (same-size padding),
        a band of rows at a time: each band's rows, with the rows its kernel reaches above and
        below (zeros beyond the map), are copied once into one ``(B, Cin, r + 2 pad, W)``."""
        b, _, h, w = maps[0].shape
        rows = max(1, BAND_BYTES // (b * self.in_channels * w * maps[0].element_size()))
        if h <= 2 * rows:
            return super().forward(_joined(maps))
        pad = self.padding[0]  # rows of context above and below every output row
        out = maps[0].new_empty(b, self.out_channels, h, w)
        for r0 in range(0, h, rows):
            r1 = min(r0 + rows, h)
            a, z = max(r0 - pad, 0), min(r1 + pad, h)  # input rows the band reads
            band = maps[0].new_empty(b, self.in_channels, r1 - r0 + 2 * pad, w)
            top = a - (r0 - pad)  # the band row holding input row a
            bottom = top + (z - a)
            band[:, :, :top].zero_()  # zero rows above and below the map
            band[:, :, bottom:].zero_()
            c0 = 0
            for m in maps:  # (B, C_i, z - a, W) each, side by side in channels
                band[:, c0 : c0 + m.shape[1], top:bottom] = m[:, :, a:z]
                c0 += m.shape[1]
            out[:, :, r0:r1] = F.conv2d(  # (B, Cout, r1 - r0, W)
                band, self.weight, self.bias, 1, (0, self.padding[1]), self.dilation
            )
        return out


def _joined(maps: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``torch.cat(maps, 1)``, or the one map itself (no copy)."""
    return torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]


class _ReLUKeepingMask(torch.autograd.Function):
    """In-place ReLU whose backward keeps a one-byte mask instead of the four-byte output."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        z.clamp_min_(0)  # what nn.ReLU(inplace=True) runs
        ctx.mark_dirty(z)
        ctx.save_for_backward(z > 0)  # bool: where the gradient passes
        return z

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        # ReLU's own backward (grad where out > 0, else +0), bit for bit, on the mask as 0/1:
        # several times faster than torch.where on a bool mask.
        return torch.ops.aten.threshold_backward(grad, mask.to(grad.dtype), 0.5)


class MaskReLU(nn.ReLU):
    """``nn.ReLU(inplace=True)`` that saves a bool mask for backward, not its output.

    PyTorch's ReLU saves its 4-byte output to mask the gradient. Where nothing else keeps that
    output for backward, a 1-byte mask suffices: a quarter of the memory, the same gradients.
    Where the next layer saves it anyway (a convolution's input), plain ``nn.ReLU`` is used.
    Without autograd it is ``relu_``.
    """

    def __init__(self) -> None:
        super().__init__(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and x.device.type != "meta":
            return _ReLUKeepingMask.apply(x)
        return torch.relu_(x)


class ConvBNReLU(nn.Module):
    """Convolution without bias, BatchNorm and ReLU (mmcv ``ConvModule`` with BN and ReLU).

    Takes a map ``(B, Cin, H, W)``, a tuple of maps to concatenate along channels, or, for a
    1x1 kernel, tokens ``(B, L, Cin)`` (:class:`TokenConv2d`).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size.
        dilation: Dilation of the convolution.
        mask_relu: Save a bool mask for ReLU's backward instead of its output
            (:class:`MaskReLU`): for layers whose output the next layer does not save.
        relu: ``False``: conv and BatchNorm only (mmcv's ``act_cfg=None``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        mask_relu: bool = False,
        relu: bool = True,
    ):
        super().__init__()
        padding = dilation * (kernel_size // 2)
        self.conv = TokenConv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = (MaskReLU() if mask_relu else nn.ReLU(inplace=True)) if relu else nn.Identity()

    @property
    def fused(self) -> bool:
        """Whether the BatchNorm is folded into ``conv`` (``models.fusion.fuse_for_inference``)."""
        return isinstance(self.bn, nn.Identity)

    def train(self, mode: bool = True) -> ConvBNReLU:
        if mode and self.fused:
            raise RuntimeError(FUSED_MODEL)
        return super().train(mode)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, Cout, H, W)``, tokens ``(B, L, Cin) -> (B, L, Cout)``, or a
        tuple of maps whose channel concatenation is the input (:class:`TokenConv2d`)."""
        y = self.conv(x)
        if y.dim() == 3:
            b, n, c = y.shape
            # BatchNorm over (B*L, C, 1, 1): BatchNorm2d's statistics over (B, C, H, W). The
            # in-place ReLU runs on BatchNorm's output, not a view of it: in place on a view,
            # autograd would rebuild the base's gradient in backward (zero fill + copy).
            return self.act(self.bn(y.view(b * n, c, 1, 1))).view(b, n, c)  # -> (B, L, C)
        return self.act(self.bn(y))


class Conv(nn.Module):
    """A convolution with bias under ``conv`` (mmcv ``ConvModule`` without norm or activation).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size; padding keeps the spatial size.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Cin, H, W) -> (B, Cout, H, W)``."""
        return self.conv(x)


class Scale(nn.Module):
    """A learnable scalar ``scale`` times the input (mmcv's ``Scale``: CC's and DA's ``gamma``).

    Args:
        value: Initial value (mmseg starts its attention gammas at 0).
    """

    def __init__(self, value: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, impl: AttnImpl = "fused"
) -> torch.Tensor:
    """Softmax attention of ``q (B, L, Ck)`` over ``k (B, L, Ck)``, ``v (B, L, Cv)``.

    ``fused``: ``F.scaled_dot_product_attention`` (:func:`fused_attention_heads`); ``explicit``
    materialises the ``(B, L, L)`` affinities; ``auto`` picks one per call (:func:`choose_impl`).

    Returns:
        Context ``(B, L, Cv)``.
    """
    if impl == "auto":
        impl = choose_impl(q, v)
    if impl == "explicit":
        # Scaled after the product, as mmseg: no scaled copy of q for backward to keep.
        attn = torch.bmm(q, k.transpose(1, 2)).mul_(scale).softmax(dim=-1)  # (B, L, L)
        return torch.bmm(attn, v)
    if impl != "fused":
        raise ValueError(
            f"unknown attention implementation {impl!r}: use 'fused', 'explicit' or 'auto'"
        )
    o = fused_attention_heads(q, k, v, scale)  # (B, h, L, Ck)
    b, h, n, ck = o.shape
    return o.transpose(1, 2).reshape(b, n, h * ck)  # heads side by side, a copy when h > 1


def fused_attention_heads(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scaled_dot_product_attention`` with the values as heads: ``(B, Cv / Ck, L, Ck)``.

    The flash kernels (CPU and GPU) need one head dimension for q, k and v. When ``Cv`` is a
    multiple of ``Ck`` the values are viewed as ``Cv / Ck`` heads of ``Ck`` channels sharing q
    and k (expanded, not copied): every head has the same softmax weights, so the heads side by
    side are the exact context. Otherwise the result has one head of ``Cv`` channels (with
    ``Cv != Ck`` the CPU runs SDPA's math kernel, which builds the ``L x L`` affinity).

    The flash kernels also need a unit stride in the last dimension: on another layout (NL's
    tokens, transposed views of its maps) SDPA would fall back to its math kernel as well, so
    q, k and v are made contiguous first (no copy when they are).
    """
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    b, n, ck = q.shape
    cv = v.shape[-1]
    if cv == ck or cv % ck:
        # 4-D, one head: the ONNX exporter takes SDPA on 4-D tensors only.
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)
    h = cv // ck
    vh = v.view(b, n, h, ck).transpose(1, 2)  # (B, h, L, Ck), a view
    qh, kh = q[:, None].expand(b, h, n, ck), k[:, None].expand(b, h, n, ck)
    return F.scaled_dot_product_attention(qh, kh, vh, scale=scale)


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
        # Its output is copied into the next layout, not saved: a mask suffices for backward.
        self.output_project = ConvBNReLU(channels, channels, mask_relu=True)
        self.scale = isa_channels**-0.5

    def forward(
        self, t: torch.Tensor, impl: AttnImpl = "fused", return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens ``(B, L, C)`` -> attended and projected tokens ``(B, L, C)``.

        Args:
            t: Tokens ``(B, L, C)``.
            impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention (:func:`attention`).
            return_qk: Also return the detached queries and keys, ``(B, L, isa_channels)``.

        Returns:
            The tokens, or ``(tokens, queries, keys)`` when ``return_qk``.
        """
        q, k = self.query_project(t), self.key_project(t)  # (B, L, Ck) each
        v = self.value_project(t)  # (B, L, C)
        context = attention(q, k, v, self.scale, impl)  # (B, L, C)
        if return_qk:
            return self.output_project(context), q.detach(), k.detach()
        del q, k, v  # without autograd, nothing else holds them: freed before the projection
        return self.output_project(context)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block, and every submodule's mode as it was after.

    Each submodule's ``training`` flag is restored on its own (a frozen encoder's norms stay in
    eval). A module already in eval mode is not touched: several threads may run it at once.

    Args:
        module: The module to run in eval mode.

    Yields:
        ``module``, in eval mode.
    """
    modes = [(m, m.training) for m in module.modules()]
    if not any(training for _, training in modes):
        yield module
        return
    try:
        module.eval()
        yield module
    finally:
        for m, training in modes:
            m.training = training
