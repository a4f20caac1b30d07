"""Explicit inference preparation: :func:`prepare_for_inference`.

A trained model's heads are plain modules: every layer runs through its ``__call__`` (hooks
fire), BatchNorm is a module of its own, and the same code runs with and without autograd.
For deployment and the app, :func:`prepare_for_inference` returns a copy in which each head is
replaced, once, by its prepared counterpart:

* BatchNorm folded into the convolution before it (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`);
* ``in_conv`` run in row bands (:class:`~isa_explorer.models.inference.ConvReLU`);
* ``out_conv`` without the concatenated copy (:class:`~isa_explorer.models.inference.ConcatConvReLU`);
* the relation blocks as :class:`~isa_explorer.models.inference.PreparedRelation`;
* the fused ISA path streamed over chunks of attention sequences
  (:func:`~isa_explorer.models.isa.streaming.streamed_context`).

The prepared heads' forward is plain too, takes the same ``return_attention`` argument and
gives the original logits up to fp32 rounding. The encoder is left as it is. Why each step is
kept, measured: ``docs/benchmarks.md`` (at 128x256 the whole head's peak memory is 0.57x the
explicit path's, mostly from streaming and banding).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import TypeVar

import torch
from torch import nn

from isa_explorer.models.heads import (
    Attention,
    ContextHead,
    DenseAttentionDecoder,
    FCNHead,
    dense_context,
)
from isa_explorer.models.inference import ConcatConvReLU, ConvReLU, PreparedRelation, fold
from isa_explorer.models.isa.decoder import GroupGrid, ISADecoder, isa_context, ordered_steps
from isa_explorer.models.isa.model import ISANet
from isa_explorer.models.isa.streaming import streamed_context

__all__ = [
    "PreparedDenseDecoder",
    "PreparedFCNHead",
    "PreparedHead",
    "PreparedISADecoder",
    "is_prepared",
    "prepare_for_inference",
]

M = TypeVar("M", bound=nn.Module)


class PreparedHead(nn.Module):
    """Base of the prepared heads: inference only (``train(True)`` is refused)."""

    prepared = True

    def train(self, mode: bool = True) -> PreparedHead:
        if mode:
            raise RuntimeError(
                "this head is prepared for inference (BatchNorm folded, no dropout) and cannot "
                "be trained: load the model again without for_inference=True"
            )
        return super().train(False)


class _PreparedContextHead(PreparedHead, ABC):
    """``in_conv`` -> context -> ``out_conv(context, residual)`` -> ``conv_seg``, prepared.

    Subclasses implement :meth:`context` (as :class:`ContextHead` does for the plain heads).
    """

    def __init__(self, head: ContextHead):
        super().__init__()
        self.attn_impl = head.attn_impl
        self.in_conv = ConvReLU(fold(head.in_conv))
        self.out_conv = ConcatConvReLU(fold(head.out_conv))
        self.conv_seg = copy.deepcopy(head.conv_seg)

    @abstractmethod
    def context(
        self, residual: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, Attention | None]:
        """``in_conv``'s output ``(B, C, H, W)`` -> ``(context, attention or None)``."""

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Attention]:
        """``(B, Cin, H, W) -> (B, classes, H, W)`` logits (and the attention dict when asked)."""
        residual = self.in_conv(x)  # (B, C, H, W)
        context, attn = self.context(residual, return_attention)
        logits = self.conv_seg(self.out_conv(context, residual))
        return (logits, attn) if return_attention else logits


class PreparedISADecoder(_PreparedContextHead):
    """An :class:`ISADecoder` prepared for inference.

    The fused path streams the attention sequences in chunks of about ``token_budget``
    positions (``None``: the device's default, see
    :mod:`~isa_explorer.models.isa.streaming`); the explicit path runs the whole map. Modules:
    ``in_conv`` (:class:`ConvReLU`), ``global_relation`` and ``local_relation``
    (:class:`PreparedRelation`), ``out_conv`` (:class:`ConcatConvReLU`), ``conv_seg``.
    """

    def __init__(self, head: ISADecoder, token_budget: int | None = None):
        super().__init__(head)
        self.down_factor, self.order = head.down_factor, head.order
        self.global_relation = PreparedRelation(head.global_relation)
        self.local_relation = PreparedRelation(head.local_relation)
        self.token_budget = token_budget

    @property
    def steps(self) -> tuple[tuple[str, PreparedRelation], tuple[str, PreparedRelation]]:
        return ordered_steps(self.order, self.global_relation, self.local_relation)

    def context(
        self, residual: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, Attention | None]:
        grid = GroupGrid.of(*residual.shape[-2:], self.down_factor)
        if self.attn_impl in ("fused", "auto"):  # inference: "auto" is fused (choose_impl)
            return streamed_context(self.steps, residual, grid, self.token_budget, return_attention)
        return isa_context(self.steps, residual, grid, self.attn_impl, return_attention)


class PreparedDenseDecoder(_PreparedContextHead):
    """A :class:`DenseAttentionDecoder` prepared for inference (one attention, whole map)."""

    def __init__(self, head: DenseAttentionDecoder):
        super().__init__(head)
        self.relation = PreparedRelation(head.relation)

    def context(
        self, residual: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, Attention | None]:
        return dense_context(self.relation, residual, self.attn_impl, return_attention)


class PreparedFCNHead(PreparedHead):
    """An :class:`FCNHead` prepared for inference (BatchNorm folded, banded 3x3 convs)."""

    def __init__(self, head: FCNHead):
        super().__init__()
        self.convs = nn.Sequential(*[ConvReLU(fold(m)) for m in head.convs])
        self.conv_cat = None if head.conv_cat is None else ConvReLU(fold(head.conv_cat))
        self.conv_seg = copy.deepcopy(head.conv_seg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return self.conv_seg(y)


def _prepare_head(head: nn.Module, token_budget: int | None) -> nn.Module:
    if isinstance(head, PreparedHead):
        return head
    if isinstance(head, ISADecoder):
        return PreparedISADecoder(head, token_budget)
    if isinstance(head, DenseAttentionDecoder):
        return PreparedDenseDecoder(head)
    if isinstance(head, FCNHead):
        return PreparedFCNHead(head)
    raise TypeError(f"cannot prepare a {type(head).__name__} for inference")


def prepare_for_inference(model: M, token_budget: int | None = None, inplace: bool = False) -> M:
    """A copy of ``model`` (an :class:`ISANet` or a bare head) ready for fast inference.

    The heads are replaced by their prepared counterparts (see the module docstring) in eval
    mode; the encoder is kept. The result gives the original model's eval-mode logits up to
    fp32 rounding, and the heads still return their queries and keys with
    ``return_attention=True``. It cannot be trained or saved with ``save_pretrained``: keep
    the original for that.

    Args:
        model: An ``ISANet``, ``ISADecoder``, ``DenseAttentionDecoder`` or ``FCNHead``.
        token_budget: Positions per chunk of the streamed ISA path (``None``: the device's
            default).
        inplace: Replace the heads of ``model`` itself instead of a copy.

    Returns:
        The prepared model (for an ``ISANet`` with ``inplace``, ``model`` itself).

    Raises:
        TypeError: ``model`` is none of the above.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        if isinstance(model, ISANet):
            model.decoder = _prepare_head(model.decoder, token_budget)
            if model.aux_head is not None:
                model.aux_head = _prepare_head(model.aux_head, token_budget)
            return model
        return _prepare_head(model, token_budget)


def is_prepared(model: nn.Module) -> bool:
    """Whether ``model`` (an ``ISANet`` or a head) was prepared for inference."""
    head = model.decoder if isinstance(model, ISANet) else model
    return isinstance(head, PreparedHead)
