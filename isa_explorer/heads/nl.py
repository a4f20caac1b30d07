"""mmsegmentation's non-local head (``NLHead``, embedded Gaussian): one dense attention.

Wang et al., "Non-local Neural Networks", CVPR 2018. mmseg's ``NLHead`` is the FCN head
(:class:`~isa_explorer.heads.fcn.FCNHead`, two 3x3 convs and ``conv_cat``) with mmcv's
``NonLocal2d`` between its two convs. On ``x (B, C, h, w)`` with ``N = h * w`` positions and
``Ci = C // reduction`` inner channels, 1x1 convolutions with bias give

    theta_i = W_theta x_i,  phi_j = W_phi x_j,  g_j = W_g x_j                 (Ci each)
    a_ij = softmax_j(theta_i . phi_j / sqrt(Ci))                              (N x N)
    z_i = x_i + BN(W_out sum_j a_ij g_j)                                      (C)

(mode ``embedded_gaussian``, ``use_scale=True``; mmseg's published R-50-D8 config: ``C =
512``, ``reduction = 2``, so ``Ci = 256``). The attention is softmax attention with queries
theta, keys phi and values g, all ``Ci`` wide and scaled by ``Ci ** -0.5``: it runs through
:func:`~isa_explorer.models.layers.attention` (``"fused"``: ``scaled_dot_product_attention``;
``"explicit"``: the ``N x N`` affinity, as mmcv), the same weights either way.

Weights load from mmseg checkpoints as they are: ``nl_block.{g,theta,phi}.conv.{weight,bias}``,
``nl_block.conv_out.conv.weight`` and ``nl_block.conv_out.bn.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from isa_explorer.heads.fcn import FCNHead
from isa_explorer.heads.protocol import (
    BYTES,
    Cost,
    HeadConfig,
    MapInfo,
    MmsegNames,
    Record,
    context_cost,
    peak_bytes,
    softmax_attention_flops,
)
from isa_explorer.heads.registry import register
from isa_explorer.models.layers import AttnImpl, Conv, ConvBNReLU, attention

#: Peak memory of :meth:`NLHead.cost` per implementation and pass: ``(a, f)``, ``a`` ``N x C``
#: activations plus ``f`` times the ``N x N`` affinity (explicit only), fitted to fresh-process
#: CPU peaks (:mod:`isa_explorer.costs.measure`) of the block alone with ``C = 512`` at 32x64
#: and 64x128 positions, rounded up to cover the larger (fixed workspaces of a few MiB, not
#: modelled, exceed the fused path's model at the smaller).
PEAK = {
    "explicit": {"forward": (4, 2), "forward+backward": (8, 3)},
    "fused": {"forward": (6, 0), "forward+backward": (9, 0)},
}


class NonLocal2d(nn.Module):
    """mmcv's ``NonLocal2d`` in ``embedded_gaussian`` mode, without sub-sampling.

    Args:
        in_channels: Channels of the input and output.
        reduction: ``inter_channels = max(in_channels // reduction, 1)``.
        use_scale: Scale the affinities by ``inter_channels ** -0.5`` (mmseg: ``True``).
        attn_impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        use_scale: bool = True,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__()
        self.inter_channels = max(in_channels // reduction, 1)
        ci = self.inter_channels
        # Defined in mmcv's order, so state_dict() lists the keys as mmseg does.
        self.g = Conv(in_channels, ci, 1)
        self.conv_out = ConvBNReLU(ci, in_channels, 1, relu=False)  # conv (no bias) + BN
        self.theta = Conv(in_channels, ci, 1)
        self.phi = Conv(in_channels, ci, 1)
        self.scale = ci**-0.5 if use_scale else 1.0
        self.attn_impl = attn_impl
        # mmcv's initialisation: the block starts as the identity (conv_out's BN weight 0).
        for m in (self.g, self.theta, self.phi):
            nn.init.normal_(m.conv.weight, std=0.01)
            nn.init.zeros_(m.conv.bias)
        nn.init.zeros_(self.conv_out.bn.weight)

    def forward(
        self, x: torch.Tensor, return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x + BN(conv_out(attention))`` on ``x (B, C, h, w)``.

        Args:
            x: The map ``(B, C, h, w)``.
            return_qk: Also return the detached queries (theta) and keys (phi) as maps
                ``(B, inter_channels, h, w)``.

        Returns:
            ``(B, C, h, w)``, or ``(output, queries, keys)`` when ``return_qk``.
        """
        b, _, h, w = x.shape
        q, k, v = self.theta(x), self.phi(x), self.g(x)  # (B, Ci, h, w) each
        tokens = [t.flatten(2).transpose(1, 2) for t in (q, k, v)]  # (B, h*w, Ci) views
        y = attention(*tokens, self.scale, self.attn_impl)  # (B, h*w, Ci)
        y = y.transpose(1, 2).reshape(b, self.inter_channels, h, w)  # (B, Ci, h, w)
        out = x + self.conv_out(y)
        return (out, q.detach(), k.detach()) if return_qk else out


@dataclass
class NLRecord(Record):
    """Queries and keys of the non-local block.

    Attributes:
        q: Queries (theta) ``(B, Ci, h, w)``.
        k: Keys (phi) ``(B, Ci, h, w)``.
        scale: Affinity scale ``Ci ** -0.5``.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float


@register
class NLHead(FCNHead):
    """mmseg's ``NLHead``: conv, non-local block, conv, ``conv_cat(cat[x, .])``, classifier.

    Args:
        in_channels: Encoder channels.
        classes: Number of classes.
        channels: Head channels (512).
        reduction: Channel reduction of the non-local block's queries, keys and values (2).
        dropout: Dropout before the classifier (0.1).
        attn_impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention.
    """

    name = "nl"
    maps = (MapInfo("nl", "Non-local", "one softmax over every position", "nl"),)
    main_map = "nl"
    mmseg = MmsegNames("NLHead", ("convs", "conv_cat", "nl_block", "conv_seg"))

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        reduction: int = 2,
        dropout: float = 0.1,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__(in_channels, classes, channels, 2, True, dropout)
        self.nl_block = NonLocal2d(channels, reduction, attn_impl=attn_impl)

    @property
    def attn_impl(self) -> AttnImpl:
        """The attention implementation of the block (settable)."""
        return self.nl_block.attn_impl

    @attn_impl.setter
    def attn_impl(self, impl: AttnImpl) -> None:
        self.nl_block.attn_impl = impl

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> NLHead:
        """Options (``config.options``): ``reduction`` (2)."""
        c = config
        return cls(
            in_channels, classes, c.channels, dropout=c.dropout, attn_impl=c.attn_impl, **c.options
        )

    def context(
        self, y: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, NLRecord | None]:
        """The non-local block on ``y (B, channels, h, w)``, and its record when asked."""
        if not return_attention:
            return self.nl_block(y), None
        out, q, k = self.nl_block(y, return_qk=True)
        return out, NLRecord(tuple(y.shape[-2:]), q, k, self.nl_block.scale)

    @classmethod
    def attention_module(cls, config: HeadConfig) -> NonLocal2d:
        """The non-local block on ``config.channels`` channels."""
        reduction = config.options.get("reduction", 2)
        return NonLocal2d(config.channels, reduction, attn_impl=config.attn_impl)

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """The non-local block on ``N = h * w`` positions with ``Ci = C / reduction``:

        * affinities: ``N^2``, one softmax row over every position per position;
        * attention: ``Q K^T`` and ``A V`` with ``Ci``-d queries, keys and values,
          ``4 N^2 Ci`` FLOPs on either path (``Ck = Cv = Ci``: one fused head,
          :func:`~isa_explorer.heads.protocol.softmax_attention_flops`);
        * projections: theta, phi, g (``C -> Ci``) and ``conv_out`` (``Ci -> C``), ``8 C Ci``
          FLOPs per position (biases and BatchNorm are not counted).

        Peak memory: :data:`PEAK` (calibrated on the CPU).
        """
        n, c = batch * h * w, config.channels
        ci = max(c // config.options.get("reduction", 2), 1)
        pairs = batch * (h * w) ** 2
        proj = n * 8 * c * ci
        model = PEAK[impl if impl in PEAK else "fused"]
        peak = peak_bytes(n * c * BYTES, pairs * BYTES, model)
        return context_cost(n, pairs, softmax_attention_flops(pairs, ci, ci, impl), proj, peak)

    @classmethod
    def query_maps(cls, record: NLRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """The softmax row of cell ``(fx, fy)``: ``O(N * Ci)``, one query against all keys
        (:meth:`main_maps` of one query)."""
        return {"nl": cls.main_maps(record, torch.tensor([fx]), torch.tensor([fy]))[0]}

    @classmethod
    def main_maps(cls, record: NLRecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The non-local maps of ``Q`` cells at once: their queries against every key (the one
        home of the head's map math: :meth:`query_maps` asks for one query).

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, row ``i`` equal to ``query_maps(record, fx[i], fy[i])['nl']``;
            ``O(Q N)`` memory.
        """
        q, k = record.q[0].double(), record.k[0].double()  # (C., h, w)
        logits = torch.einsum("cq,chw->qhw", q[:, fy, fx], k) * record.scale  # (Q, h, w)
        return logits.flatten(1).softmax(-1).view_as(logits)  # softmax over (h * w)

    @classmethod
    def reach(cls, record: NLRecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """Every cell: the block attends over the whole map."""
        return {"nl": torch.ones(record.size, dtype=torch.bool)}

    @classmethod
    def mmseg_config(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Head channels from ``convs.0``; ``reduction`` from ``nl_block.g`` (``C // Ci``).

        Raises:
            KeyError: A missing key.
            ValueError: ``Ci`` that no integer reduction of ``C`` gives.
        """
        channels = state["decode_head.convs.0.conv.weight"].shape[0]
        inter = state["decode_head.nl_block.g.conv.weight"].shape[0]
        reduction = max(channels // inter, 1)
        if max(channels // reduction, 1) != inter:
            raise ValueError(f"nl_block has {inter} inner channels: no reduction of {channels}")
        return {"decoder_channels": channels, "head_options": {"reduction": reduction}}
