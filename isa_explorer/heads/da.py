"""Dual Attention Network (Fu et al., CVPR 2019, arXiv 1809.02983), as mmseg's ``DAHead``.

Two branches on the encoder's map ``x``, each ``3x3 conv-BN-ReLU -> attention -> 3x3
conv-BN-ReLU``, summed before the classifier:

* position attention (``PAM``), over the ``N = h * w`` positions of ``X`` (``C x N``): 1x1
  convolutions with bias give queries and keys ``Q, K`` (``Cp = pam_channels`` each) and values
  ``V`` (``C``); ``A = softmax_j(Q_i . K_j)`` with *no* ``1 / sqrt(Cp)`` scaling (an ``N x N``
  affinity), and the output is ``gamma_p * (A V) + X``;
* channel attention (``CAM``), over the ``C`` channels, without any projection: the energies
  ``E = X X^T`` (``C x C``, summed over the ``N`` positions) become ``B = softmax(max_row(E) -
  E)`` (row-wise; the shift only matters numerically, ``B = softmax(-E)``: a channel attends
  most to the channels it is *least* similar to), and the output is ``gamma_c * (B X) + X``.

The head returns ``pam_cam = conv_seg(pam_feat + cam_feat)``; in training also each branch's
own logits, ``pam_conv_seg(pam_feat)`` and ``cam_conv_seg(cam_feat)``, all three with a
cross-entropy loss of weight 1 (:attr:`DAHead.loss_weights`). Parameter names are mmseg's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from isa_explorer.heads.protocol import (
    BYTES,
    Cost,
    Head,
    HeadConfig,
    MapInfo,
    MmsegNames,
    Record,
    ValueInfo,
    context_cost,
    peak_bytes,
    softmax_attention_flops,
)
from isa_explorer.heads.registry import register
from isa_explorer.models.layers import AttnImpl, ConvBNReLU, Scale, TokenConv2d, attention

#: Channels of CAM's input a query marks (:meth:`DAHead.query_values`).
TOP_CHANNELS = 8
#: Peak memory of :meth:`DAHead.cost` per implementation and pass: ``(a, f)``, ``a`` ``N x C``
#: activations plus ``f`` times the affinities built, fitted to fresh-process CPU peaks
#: (:mod:`isa_explorer.costs.measure`) of PAM and CAM alone with ``C = 512`` at 32x64 and 64x128
#: positions, rounded up to cover the larger (fixed workspaces of a few MiB, not modelled,
#: exceed the fused path's model at the smaller).
PEAK = {
    "explicit": {"forward": (4, 2), "forward+backward": (8, 3)},
    "fused": {"forward": (5, 2), "forward+backward": (12, 3)},
}


class PAM(nn.Module):
    """Position attention module (mmseg's ``PAM``, a ``_SelfAttentionBlock`` with one 1x1
    convolution with bias per projection, no norm, no output projection, no scaling).

    Args:
        channels: Channels of the input and values (``channels`` of the head).
        pam_channels: Channels of queries and keys (64 in the published head).
    """

    def __init__(self, channels: int, pam_channels: int):
        super().__init__()
        self.key_project = TokenConv2d(channels, pam_channels, 1)
        self.query_project = TokenConv2d(channels, pam_channels, 1)
        self.value_project = TokenConv2d(channels, channels, 1)
        self.gamma = Scale(0.0)

    def forward(
        self, x: torch.Tensor, impl: AttnImpl = "fused", return_qk: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, h, w) -> gamma * softmax(Q K^T) V + x``, ``(B, C, h, w)``.

        Args:
            x: The map.
            impl: ``"fused"``, ``"explicit"`` or ``"auto"`` attention.
            return_qk: Also return the detached queries and keys, ``(B, Cp, h, w)``.
        """
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C), a view
        q, k = self.query_project(t), self.key_project(t)  # (B, N, Cp)
        context = attention(q, k, self.value_project(t), 1.0, impl)  # (B, N, C), unscaled
        out = self.gamma(context.transpose(1, 2).reshape(b, c, h, w)) + x  # (B, C, h, w)
        if not return_qk:
            return out
        q, k = (v.detach().transpose(1, 2).reshape(b, -1, h, w) for v in (q, k))  # (B, Cp, h, w)
        return out, q, k


def cam_logits(energy: torch.Tensor) -> torch.Tensor:
    """CAM's softmax logits from its energies ``E (B, C, C)``: ``max_row(E) - E``."""
    return energy.amax(-1, keepdim=True) - energy


def channel_attention(f: torch.Tensor) -> torch.Tensor:
    """CAM's ``softmax(max_row(E) - E)``, ``E = f f^T``, of ``f (B, C, N)``: ``(B, C, C)``.

    In at least float32, also under autocast and for a half-precision ``f``: the energies sum
    ``N`` products (~4000 at 64x128 positions), where bfloat16's spacing (16-32) garbles the
    softmax (weights off by up to 0.9, measured) and float16 may overflow. The ``C x C x N``
    product costs ~2 % of a published branch's 3x3 convolutions. (mmseg runs it in the
    autocast dtype.)
    """
    device = f.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return channel_attention(f.float())
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    return cam_logits(torch.bmm(f, f.transpose(1, 2))).softmax(-1)


class CAM(nn.Module):
    """Channel attention module (mmseg's ``CAM``): no projections, one gamma."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = Scale(0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` -> ``(gamma * A X + x, A)``, ``A = softmax(max - X X^T)`` ``(B, C, C)``
        (:func:`channel_attention`, float32 or float64)."""
        b, c, h, w = x.shape
        f = x.flatten(2)  # (B, C, N)
        attn = channel_attention(f)  # (B, C, C)
        out = torch.bmm(attn.to(f.dtype), f).view(b, c, h, w)
        return self.gamma(out) + x, attn


class DualAttention(nn.Module):
    """PAM and CAM side by side on one map, ``pam(x) + cam(x)`` (in the head they run on two
    branches): the head's attention step alone, for benchmarks.

    Args:
        channels: Channels of the map.
        pam_channels: PAM's query/key channels.
        attn_impl: PAM's attention implementation.
    """

    def __init__(self, channels: int, pam_channels: int, attn_impl: AttnImpl = "fused"):
        super().__init__()
        self.attn_impl = attn_impl
        self.pam = PAM(channels, pam_channels)
        self.cam = CAM()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w) -> (B, C, h, w)``."""
        return self.pam(x, self.attn_impl) + self.cam(x)[0]


@dataclass
class DARecord(Record):
    """What DA attended with.

    Attributes:
        pam_q, pam_k: PAM's queries and keys, ``(B, Cp, h, w)``.
        cam_attention: CAM's channel attention ``softmax(max - X X^T)``, ``(B, C, C)``.
        cam_input: CAM's input ``X`` (after ``cam_in_conv``), ``(B, C, h, w)``.
    """

    pam_q: torch.Tensor
    pam_k: torch.Tensor
    cam_attention: torch.Tensor
    cam_input: torch.Tensor


@register
class DAHead(Head):
    """DANet's head: position and channel attention branches, three classifiers.

    ``forward`` returns the logits it predicts with, ``pam_cam``; :meth:`forward_train` all
    three. Every layer runs in both (as mmseg's ``forward``): forward hooks on
    ``pam_conv_seg`` and ``cam_conv_seg`` fire at inference too.

    Args:
        in_channels: Encoder channels (2048 for ResNet-50).
        classes: Number of classes.
        channels: Channels of both branches (512).
        pam_channels: PAM's query/key channels (64).
        dropout: Dropout before each classifier (0.1).
        attn_impl: PAM's attention: ``"fused"``, ``"explicit"`` or ``"auto"``.

    Shapes:
        ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits at feature resolution.
    """

    name = "da"
    maps = (
        MapInfo(
            "position", "Position attention", "PAM: one softmax over every position", "position"
        ),
    )
    main_map = "position"
    values = (
        ValueInfo(
            "channel",
            "Channel attention",
            "CAM's C x C matrix of the image: one matrix shared by every position, "
            "it does not depend on the query",
            per_query=False,
        ),
        ValueInfo(
            "query_channels",
            "Query's strongest channels",
            f"the (up to {TOP_CHANNELS}) channels most active at the query in CAM's input",
        ),
    )
    loss_weights = {"out": 1.0, "pam": 1.0, "cam": 1.0}
    mmseg = MmsegNames(
        "DAHead",
        (
            "pam_in_conv",
            "pam",
            "pam_out_conv",
            "pam_conv_seg",
            "cam_in_conv",
            "cam",
            "cam_out_conv",
            "cam_conv_seg",
            "conv_seg",
        ),
    )

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 512,
        pam_channels: int = 64,
        dropout: float = 0.1,
        attn_impl: AttnImpl = "fused",
    ):
        super().__init__()
        self.attn_impl = attn_impl
        self.pam_in_conv = ConvBNReLU(in_channels, channels, 3)
        self.pam = PAM(channels, pam_channels)
        self.pam_out_conv = ConvBNReLU(channels, channels, 3)
        self.pam_conv_seg = nn.Conv2d(channels, classes, 1)
        self.cam_in_conv = ConvBNReLU(in_channels, channels, 3)
        self.cam = CAM()
        self.cam_out_conv = ConvBNReLU(channels, channels, 3)
        self.cam_conv_seg = nn.Conv2d(channels, classes, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> DAHead:
        """Options (``config.options``): ``pam_channels`` (64).

        Raises:
            ValueError: An unknown option.
        """
        options = dict(config.options)
        pam_channels = int(options.pop("pam_channels", 64))
        if options:
            raise ValueError(f"unknown DAHead options {sorted(options)}: it has pam_channels")
        c = config
        return cls(in_channels, classes, c.channels, pam_channels, c.dropout, c.attn_impl)

    def _outputs(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> tuple[dict[str, torch.Tensor], DARecord | None]:
        """``{"out": pam_cam, "pam": ..., "cam": ...}`` logits ``(B, classes, H, W)``, and the
        record when ``return_attention``."""
        y = self.pam_in_conv(x)  # (B, C, H, W)
        if return_attention:
            y, q, k = self.pam(y, self.attn_impl, return_qk=True)
        else:
            y = self.pam(y, self.attn_impl)
        pam_feat = self.pam_out_conv(y)
        cam_in = self.cam_in_conv(x)
        y, cam_attn = self.cam(cam_in)
        cam_feat = self.cam_out_conv(y)
        out = {
            "out": self.conv_seg(self.dropout(pam_feat + cam_feat)),
            "pam": self.pam_conv_seg(self.dropout(pam_feat)),
            "cam": self.cam_conv_seg(self.dropout(cam_feat)),
        }
        if not return_attention:
            return out, None
        size = (x.shape[-2], x.shape[-1])
        return out, DARecord(size, q, k, cam_attn.detach(), cam_in.detach())

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, DARecord]:
        """``(B, Cin, H, W) -> (B, classes, H, W)``: ``pam_cam``, the logits DA predicts with
        (and, with ``return_attention``, the :class:`DARecord`)."""
        out, record = self._outputs(x, return_attention)
        return (out["out"], record) if return_attention else out["out"]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"out": pam_cam, "pam": pam_out, "cam": cam_out}``, each ``(B, classes, H, W)``."""
        return self._outputs(x)[0]

    @classmethod
    def attention_module(cls, config: HeadConfig) -> nn.Module:
        pam_channels = int(config.options.get("pam_channels", 64))
        return DualAttention(config.channels, pam_channels, config.attn_impl)

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """PAM and CAM on ``N = h * w`` positions, ``C`` channels, ``Cp = pam_channels``:

        * affinities: PAM's ``N^2`` plus CAM's ``C^2``;
        * attention: PAM's ``Q K^T`` and ``A V``, ``2 N^2 (Cp + C)`` FLOPs explicit (the fused
          path runs the values as ``C / Cp`` heads when ``Cp`` divides ``C``:
          :func:`~isa_explorer.heads.protocol.softmax_attention_flops`), plus CAM's
          ``E = X X^T`` and ``B X``, two ``C x C x N`` products, ``4 C^2 N`` FLOPs;
        * projections: PAM's queries, keys (``C -> Cp``) and values (``C -> C``),
          ``2 C (2 Cp + C)`` FLOPs per position (CAM has none).

        Peak memory: :data:`PEAK`, over the affinities built (``N^2 + C^2`` explicit, CAM's
        ``C^2`` when the fused path runs SDPA's flash kernel), calibrated on the CPU.
        """
        n, c = batch * h * w, config.channels
        cp = int(config.options.get("pam_channels", 64))
        pam, cam = batch * (h * w) ** 2, batch * c * c
        pam_fwd, pam_bwd = softmax_attention_flops(pam, cp, c, impl)
        cam_fwd = 4 * c * c * n
        proj = n * 2 * c * (2 * cp + c)
        flash = impl == "fused" and c % cp == 0  # else SDPA's math kernel builds PAM's N x N
        built = cam if flash else pam + cam
        peak = peak_bytes(n * c * BYTES, built * BYTES, PEAK["fused" if flash else "explicit"])
        attention = (pam_fwd + cam_fwd, pam_bwd + 2 * cam_fwd)
        return context_cost(n, pam + cam, attention, proj, peak)

    @classmethod
    def mmseg_config(cls, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {
            "decoder_channels": state["decode_head.pam_in_conv.conv.weight"].shape[0],
            "head_options": {
                "pam_channels": state["decode_head.pam.query_project.weight"].shape[0]
            },
        }

    # -- what a query sees ----------------------------------------------------------------------

    @classmethod
    def query_maps(cls, record: DARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """PAM's map of cell ``(fx, fy)``: ``softmax_j(q . k_j)`` over every cell, ``O(N Cp)``
        (:meth:`main_maps` of one query)."""
        return {"position": cls.main_maps(record, torch.tensor([fx]), torch.tensor([fy]))[0]}

    @classmethod
    def main_maps(cls, record: DARecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """PAM's maps (unscaled, as mmseg) of ``Q`` cells at once: their queries against every
        key (the one home of the map math: :meth:`query_maps` asks for one query).

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, row ``i`` equal to ``query_maps(record, fx[i], fy[i])['position']``;
            ``O(Q N)`` memory.
        """
        q, k = record.pam_q[0].double(), record.pam_k[0].double()  # (C., h, w)
        logits = torch.einsum("cq,chw->qhw", q[:, fy, fx], k)  # (Q, h, w)
        return logits.flatten(1).softmax(-1).view_as(logits)  # softmax over (h * w)

    @classmethod
    def query_values(cls, record: DARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``channel``: CAM's ``(C, C)`` matrix of image 0 (row ``i``: what channel ``i`` mixes
        in), float64, the same for every query; ``query_channels``: int64 indices of the (up to
        :data:`TOP_CHANNELS`) channels with the largest positive CAM input at the query, strongest
        first (a ReLU'd channel at 0 is not among them)."""
        act = record.cam_input[0, :, fy, fx].double()  # (C,)
        top = act.topk(min(TOP_CHANNELS, act.numel()))
        return {
            "channel": record.cam_attention[0].double(),
            "query_channels": top.indices[top.values > 0].to(torch.int64),
        }

    @classmethod
    def reach(cls, record: DARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        return {"position": torch.ones(record.size, dtype=torch.bool)}
