"""Inference fusion in place: :func:`fuse_for_inference` folds BatchNorm into convolutions."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from isa_explorer.models.layers import FUSED_MODEL, ConvBNReLU

M = TypeVar("M", bound=nn.Module)


def fuse_for_inference(model: M) -> M:
    """Fold every BatchNorm of ``model``'s :class:`ConvBNReLU` layers into its convolution.

    The one operation that changes a model in place (as ``torch.ao.quantization.fuse_modules``
    and timm's ``reparameterize_model``): in eval mode, each convolution becomes
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` of it and its BatchNorm (a bias takes the
    shift), the BatchNorm ``nn.Identity``. Forward hooks still fire on each module, the logits
    agree up to fp32 rounding, and no layer writes a second copy of its output. Idempotent. A
    fused model cannot be trained (``train()`` raises) or saved (``save_pretrained``).

    Args:
        model: Any module (an ``ISANet``, a head, a block).

    Returns:
        ``model`` itself, fused and in eval mode.
    """
    model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConvBNReLU) and not m.fused:
                m.conv = fuse_conv_bn_eval(m.conv, m.bn)
                m.bn = nn.Identity()
    return model.eval()  # the new modules too


def is_fused(model: nn.Module) -> bool:
    """Whether any conv-BN-ReLU of ``model`` was folded by :func:`fuse_for_inference`."""
    return any(isinstance(m, ConvBNReLU) and m.fused for m in model.modules())


def refuse_training_if_fused(model: nn.Module, mode: bool = True) -> None:
    """Raise before a fused model is switched to training mode (its BatchNorms are gone).

    Raises:
        RuntimeError: ``mode`` is true and ``model`` is fused.
    """
    if mode and is_fused(model):
        raise RuntimeError(FUSED_MODEL)
