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

    The one operation that changes a model in place: ``model`` is put in eval mode, and in
    each conv-BN-ReLU the convolution becomes
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval` of the two (a bias takes BatchNorm's
    shift) and the BatchNorm becomes ``nn.Identity`` -- what
    ``torch.ao.quantization.fuse_modules`` and timm's ``reparameterize_model`` do. The modules
    are the same ones (forward hooks fire on each), the logits the same up to fp32 rounding,
    and no layer writes a second copy of its output for a BatchNorm. Calling it again changes
    nothing. A fused model cannot be trained (``train()`` raises) or saved with
    ``save_pretrained``: load the model again for that.

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
