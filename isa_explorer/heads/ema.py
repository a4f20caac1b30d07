"""Expectation-Maximization Attention (Li et al., EMANet, ICCV 2019), as mmseg's ``EMAHead``.

EMA replaces the ``N x N`` affinity of non-local attention by ``K`` bases (``K = 64``
published) found by a few EM iterations on each image. With the features ``x_n`` (``C``
channels, ``n`` over the ``N = h * w`` positions) and the bases ``mu_k`` (``C``, unit L2
norm), one stage of :func:`em_stage` computes

* E step, the responsibilities: ``z[n, k] = softmax_k(x_n . mu_k)`` (softmax over the bases);
* M step, the new bases: ``zbar[n, k] = z[n, k] / sum_m z[m, k]`` (L1 over positions), then
  ``mu_k = normalize_L2(sum_n zbar[n, k] x_n)``.

The EM runs ``num_stages`` times (3) without gradients, starting from the ``bases`` buffer
(``(1, C, K)``, shared by all images). The reconstruction of the last stage,
``x~_n = sum_k z[n, k] mu_k``, replaces the non-local context. In training the buffer follows
the batch's bases by momentum (:meth:`EMAModule.forward`).

Head (mmseg's ``EMAHead`` with ``concat_input=True``): 3x3 ``ema_in_conv`` (conv-BN-ReLU) to
``ema_channels``; a frozen 1x1 ``ema_mid_conv`` (conv with bias, ``requires_grad=False``, the
paper's map from ``(0, inf)`` to ``(-inf, inf)``); :class:`EMAModule`; ReLU; 1x1
``ema_out_conv`` (conv-BN); ``relu(identity + .)``; 3x3 ``bottleneck`` to ``channels``; 3x3
``conv_cat`` on ``cat([x, .])``; dropout; ``conv_seg``. The published R-50-D8 model has
``channels=256`` and ``ema_channels=512`` (ISA Explorer's ``decoder_channels`` default is 512:
pass ``decoder_channels=256`` for the published EMANet).

What a query sees (:meth:`EMAHead.query_maps`): ``x~_q = sum_k z[q, k] mu_k``, and, ignoring
the bases' L2 normalisation, ``mu_k`` is the ``zbar[:, k]``-weighted mean of the features, so
``x~_q`` weights position ``n`` by ``m_q[n] = sum_k z[q, k] zbar[n, k]`` (the *effective*
map, summing to one). The maps of the query's strongest bases are ``zbar[:, k]`` themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
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
)
from isa_explorer.heads.registry import register
from isa_explorer.models.layers import Conv, ConvBNReLU


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes when ``torch.distributed`` is initialised
    (mmseg's ``reduce_mean``), else ``tensor`` itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return tensor


def em_stage(feats: torch.Tensor, bases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One EM stage: responsibilities of ``feats (B, C, N)`` over ``bases (B, C, K)``, then
    the new bases.

    Returns:
        ``(z, bases)``: ``z (B, N, K)`` softmax over the bases, the new bases ``(B, C, K)``
        L2-normalised over channels.
    """
    z = torch.einsum("bcn,bck->bnk", feats, bases)  # (B, N, K)
    z = F.softmax(z, dim=2)
    z_normed = F.normalize(z, dim=1, p=1)  # zbar: each base's weights sum to one over N
    bases = torch.einsum("bcn,bnk->bck", feats, z_normed)  # (B, C, K)
    return z, F.normalize(bases, dim=1, p=2)


class EMAModule(nn.Module):
    """mmseg's ``EMAModule``: EM attention on ``(B, C, h, w)`` with a momentum-updated
    ``bases`` buffer ``(1, C, K)``.

    Args:
        channels: Channels ``C`` of the features.
        num_bases: Number of bases ``K`` (64).
        num_stages: EM iterations (3).
        momentum: Weight of the batch's bases in the buffer's update in training (0.1).
    """

    def __init__(self, channels: int, num_bases: int, num_stages: int, momentum: float):
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {num_stages}")
        self.num_bases = num_bases
        self.num_stages = num_stages
        self.momentum = momentum
        bases = torch.zeros(1, channels, num_bases)
        bases.normal_(0, math.sqrt(2.0 / num_bases))
        self.register_buffer("bases", F.normalize(bases, dim=1, p=2))

    def forward(
        self, feats: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, h, w) -> (B, C, h, w)``, the reconstruction ``sum_k z[n, k] mu_k``.

        In training the buffer becomes ``(1 - momentum) * bases + momentum * b``, with ``b``
        the last stage's bases averaged over the batch and (when ``torch.distributed`` is
        initialised) over the processes, L2-normalised: mmseg's update, exactly.

        Returns:
            The reconstruction, or with ``return_attention`` ``(reconstruction, z, bases)``:
            the last stage's responsibilities ``(B, N, K)`` and bases ``(B, C, K)``.
        """
        b, c, h, w = feats.shape
        flat = feats.flatten(2)  # (B, C, N)
        bases = self.bases.expand(b, -1, -1)  # (B, C, K), shared by the images
        with torch.no_grad():
            for _ in range(self.num_stages):
                z, bases = em_stage(flat, bases)
        recon = torch.einsum("bck,bnk->bcn", bases, z).reshape(b, c, h, w)
        if self.training:
            with torch.no_grad():
                mean = reduce_mean(bases.mean(dim=0, keepdim=True))  # (1, C, K)
                mean = F.normalize(mean, dim=1, p=2)
                # In place (same numbers as mmseg's reassignment): the trainer holds the buffer.
                self.bases.copy_((1 - self.momentum) * self.bases + self.momentum * mean)
        if return_attention:
            return recon, z.detach(), bases.detach()
        return recon


@dataclass
class EMARecord(Record):
    """The last EM stage of every image.

    Attributes:
        z: Responsibilities ``(B, N, K)``, softmax over the ``K`` bases; positions
            ``n = y * w + x``.
        bases: The bases ``(B, C, K)`` (L2-normalised over channels).
    """

    z: torch.Tensor
    bases: torch.Tensor


#: The head's own options (``HeadConfig.options``) and their published defaults.
OPTIONS = {"ema_channels": 512, "num_bases": 64, "num_stages": 3, "momentum": 0.1}
#: Peak memory of :meth:`EMAHead.cost` per pass: ``(a, f)``, ``a`` ``N x C`` activations plus
#: ``f`` times one stage's ``N x K`` responsibilities, fitted to fresh-process CPU peaks
#: (:mod:`isa_explorer.costs.measure`) of the module alone with ``C = 512`` at 32x64, 64x128 and
#: 128x256 positions, rounded up to cover the two larger (a few MiB of fixed workspace, not
#: modelled, exceed it at the smallest).
PEAK = {"forward": (1.5, 2), "forward+backward": (1.5, 2)}


@register
class EMAHead(Head):
    """EMANet's head (mmseg's ``EMAHead``), see the module docstring.

    ``return_attention=True`` returns an :class:`EMARecord`.

    Args:
        in_channels: Encoder channels (2048 for ResNet-50).
        classes: Number of classes.
        channels: Channels of ``bottleneck`` and ``conv_cat`` (256 published).
        ema_channels: Channels of the EM attention (512).
        num_bases: Number of bases ``K`` (64).
        num_stages: EM iterations (3).
        momentum: Momentum of the bases' update in training (0.1).
        dropout: Dropout before the classifier (0.1).

    Shapes:
        ``(B, in_channels, H, W) -> (B, classes, H, W)`` logits at feature resolution.
    """

    name = "ema"
    maps = (
        MapInfo(
            "effective",
            "Effective",
            "sum over bases k of z[q, k] x zbar[:, k] (z normalised over positions, as the "
            "bases are built; their L2 norm ignored)",
            "em",
        ),
        MapInfo("base1", "Strongest base", "positions the query's strongest base averages", "em"),
        MapInfo("base2", "2nd base", "positions its 2nd strongest base averages", "em"),
        MapInfo("base3", "3rd base", "positions its 3rd strongest base averages", "em"),
    )
    main_map = "effective"
    impls = ("explicit",)
    values = (
        ValueInfo("responsibilities", "Responsibilities", "the query's weights over the bases"),
    )
    mmseg = MmsegNames(
        "EMAHead",
        (
            "ema_module",
            "ema_in_conv",
            "ema_mid_conv",
            "ema_out_conv",
            "bottleneck",
            "conv_cat",
            "conv_seg",
        ),
    )

    def __init__(
        self,
        in_channels: int,
        classes: int,
        channels: int = 256,
        ema_channels: int = 512,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        dropout: float = 0.1,
    ):
        super().__init__()
        # In mmseg's order (conv_seg first, from BaseDecodeHead): the same state_dict order.
        self.conv_seg = nn.Conv2d(channels, classes, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.ema_module = EMAModule(ema_channels, num_bases, num_stages, momentum)
        self.ema_in_conv = ConvBNReLU(in_channels, ema_channels, 3)
        self.ema_mid_conv = Conv(ema_channels, ema_channels, 1)
        # Frozen, so its initialisation stays: mmcv ConvModule's (Kaiming normal, fan-out,
        # zero bias), not PyTorch's default, sets the features' scale and so the EM softmax's.
        nn.init.kaiming_normal_(self.ema_mid_conv.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.ema_mid_conv.conv.bias)
        for p in self.ema_mid_conv.parameters():
            p.requires_grad = False
        self.ema_out_conv = ConvBNReLU(ema_channels, ema_channels, 1, relu=False)
        self.bottleneck = ConvBNReLU(ema_channels, channels, 3)
        self.conv_cat = ConvBNReLU(in_channels + channels, channels, 3)

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> EMAHead:
        """From ``config.channels``, ``config.dropout`` and ``config.options`` (keys of
        :data:`OPTIONS`)."""
        unknown = set(config.options) - set(OPTIONS)
        if unknown:
            raise ValueError(
                f"unknown option(s) of the 'ema' head: {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(OPTIONS)}"
            )
        options = {**OPTIONS, **config.options}
        return cls(in_channels, classes, config.channels, **options, dropout=config.dropout)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, EMARecord]:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits (and, with ``return_attention``,
        the :class:`EMARecord`)."""
        feats = self.ema_in_conv(x)  # (B, E, H, W)
        identity = feats
        feats = self.ema_mid_conv(feats)
        if return_attention:
            recon, z, bases = self.ema_module(feats, True)
        else:
            recon = self.ema_module(feats)
        recon = F.relu(recon, inplace=True)
        recon = self.ema_out_conv(recon)
        output = F.relu(identity + recon, inplace=True)
        output = self.bottleneck(output)  # (B, channels, H, W)
        output = self.conv_cat((x, output))  # of cat[x, output], (B, Cin + channels, H, W)
        logits = self.conv_seg(self.dropout(output))
        if return_attention:
            return logits, EMARecord((x.shape[-2], x.shape[-1]), z, bases)
        return logits

    def training_state(self) -> list[torch.Tensor]:
        """The ``bases`` buffer. Its training update already averages over the processes
        (mmseg's all-reduce in :meth:`EMAModule.forward`), so they agree and the trainer's
        average after each step changes nothing but rounding: a guard against drift."""
        return [self.ema_module.bases]

    @classmethod
    def attention_module(cls, config: HeadConfig) -> EMAModule:
        """:class:`EMAModule` on ``config.channels`` channels (the published head runs it on
        ``ema_channels``), with the bases, stages and momentum of ``config.options``."""
        o = {**OPTIONS, **config.options}
        return EMAModule(config.channels, o["num_bases"], o["num_stages"], o["momentum"])

    @classmethod
    def cost(cls, h: int, w: int, config: HeadConfig, impl: str = "fused", batch: int = 1) -> Cost:
        """:class:`EMAModule` on ``N = h * w`` positions, ``C`` channels, ``K`` bases and ``S``
        stages:

        * affinities: ``S N K``, each stage's responsibilities ``z``;
        * attention: per stage, the E step ``x . mu`` and the M step ``sum_n zbar x_n``, two
          ``N x C x K`` products, and the reconstruction ``sum_k z mu_k`` once:
          ``(4 S + 2) N C K`` FLOPs. No backward: the EM runs without gradients and the
          reconstruction reads only its results (mmseg's module), so ``forward+backward`` is
          the training-mode forward;
        * projections: none (the head's frozen ``ema_mid_conv`` runs before the module).

        One implementation (:attr:`impls`). Peak memory: :data:`PEAK` (calibrated on the CPU).
        """
        o = {**OPTIONS, **config.options}
        n, c, k, s = batch * h * w, config.channels, o["num_bases"], o["num_stages"]
        attn = (4 * s + 2) * n * c * k
        peak = peak_bytes(n * c * BYTES, n * k * BYTES, PEAK)
        return context_cost(n, s * n * k, (attn, 0), 0, peak)

    # -- what a query sees ----------------------------------------------------------------------

    @classmethod
    def _query(cls, record: EMARecord, fx: int, fy: int) -> tuple[torch.Tensor, int]:
        """``z`` of image 0 in float64, ``(N, K)``, and the query's position ``q``."""
        h, w = record.size
        if not (0 <= fx < w and 0 <= fy < h):
            raise IndexError(f"cell ({fx}, {fy}) outside the {w} x {h} feature map")
        return record.z[0].double(), fy * w + fx  # (N, K)

    @classmethod
    def query_maps(cls, record: EMARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``effective``: ``m[n] = sum_k z[q, k] zbar[n, k]`` (``zbar``: ``z`` L1-normalised
        over positions, as the last M step builds the bases). It ignores the bases' L2
        normalisation (a positive factor per base), so it is the weighting of the features
        before that. ``base1..3``: ``zbar[:, k]`` of the query's three largest ``z[q, k]``
        (with fewer than three bases the last ranks repeat the weakest). ``z`` is renormalised
        in float64, so every map sums to one to float64 rounding. ``O(N K)`` memory.
        """
        z, q = cls._query(record, fx, fy)
        zbar = z / z.sum(0)  # (N, K), each column sums to one
        zq = z[q] / z[q].sum()  # (K,); the float32 softmax sums to one only within rounding
        order = torch.sort(zq, descending=True, stable=True).indices
        maps = {"effective": zbar @ zq}  # (N,)
        for rank in range(3):
            maps[f"base{rank + 1}"] = zbar[:, order[min(rank, len(order) - 1)]]
        return {k: v.view(record.size) for k, v in maps.items()}

    @classmethod
    def main_maps(cls, record: EMARecord, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """The ``effective`` maps of ``Q`` cells at once: ``zq @ zbar^T``, ``O(Q N)`` memory.

        Args:
            record: The head's record.
            fx, fy: ``(Q,)`` int64 columns and rows of the query cells.

        Returns:
            ``(Q, h, w)`` float64, row ``i`` equal to
            ``query_maps(record, fx[i], fy[i])["effective"]``.

        Raises:
            IndexError: A cell outside the feature map.
        """
        h, w = record.size
        if not bool(((fx >= 0) & (fx < w) & (fy >= 0) & (fy < h)).all()):
            raise IndexError(f"query cells outside the {w} x {h} feature map")
        z = record.z[0].double()  # (N, K)
        zbar = z / z.sum(0)  # (N, K), each column sums to one
        zq = z[fy * w + fx]  # (Q, K)
        zq = zq / zq.sum(1, keepdim=True)  # renormalised per query, as query_maps
        return (zq @ zbar.T).view(-1, h, w)  # (Q, N) -> (Q, h, w)

    @classmethod
    def query_values(cls, record: EMARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``responsibilities``: the query's ``z[q, :]`` over the ``K`` bases (last stage,
        renormalised to sum to one in float64)."""
        z, q = cls._query(record, fx, fy)
        return {"responsibilities": z[q] / z[q].sum()}

    @classmethod
    def reach(cls, record: EMARecord, fx: int, fy: int) -> dict[str, torch.Tensor]:
        """``em``: every cell (the bases pool the whole map)."""
        return {"em": torch.ones(record.size, dtype=torch.bool)}

    # -- names -----------------------------------------------------------------------------------

    @classmethod
    def mmseg_config(cls, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``decoder_channels`` and the ``ema_channels`` / ``num_bases`` the weights fix (the
        stages and momentum are not in the weights: the published 3 and 0.1 apply)."""
        return {
            "decoder_channels": state["decode_head.bottleneck.conv.weight"].shape[0],
            "head_options": {
                "ema_channels": state["decode_head.ema_in_conv.conv.weight"].shape[0],
                "num_bases": state["decode_head.ema_module.bases"].shape[2],
            },
        }
