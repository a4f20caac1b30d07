"""Test-time inference as mmsegmentation runs it: whole image, sliding window, multi-scale + flip.

The model is any module mapping normalised images ``(B, 3, H, W)`` to logits ``(B, K, H, W)``
at the input size (``ISANet.forward``, which resizes its logits exactly as mmseg's
``encode_decode`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["whole", "slide"]
#: mmseg's sliding window for Cityscapes 769x769 models: window and step (the one default).
SLIDE_CROP: tuple[int, int] = (769, 769)
SLIDE_STRIDE: tuple[int, int] = (513, 513)


def _align_corners(model: nn.Module) -> bool:
    return bool(getattr(model, "align_corners", False))


def _check_classes(logits: torch.Tensor, num_classes: int | None) -> None:
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(
            f"the model gives {logits.shape[1]} classes but num_classes={num_classes}; "
            "evaluate a model trained for this dataset or fix num_classes"
        )


def slide_inference(
    model: nn.Module,
    image: torch.Tensor,
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Sliding-window logits, averaged where windows overlap (mmseg's ``slide_inference``).

    Windows of ``crop_size`` start every ``stride`` pixels, the last row/column shifted back to
    end at the border; an image smaller than the crop is one window (as mmseg, no padding).

    Args:
        model: Normalised images -> logits at the input size.
        image: Normalised images ``(B, 3, H, W)``.
        crop_size: Window ``(H, W)``.
        stride: Step ``(H, W)`` between windows.
        num_classes: Expected number of classes ``K`` (checked), or ``None``.

    Returns:
        Logits ``(B, K, H, W)``.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    if min(h_crop, w_crop, h_stride, w_stride) <= 0:
        raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
    b, _, h, w = image.shape
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    logits: torch.Tensor | None = None
    count = image.new_zeros((b, 1, h, w))
    for i in range(h_grids):
        for j in range(w_grids):
            y2, x2 = min(i * h_stride + h_crop, h), min(j * w_stride + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_logits = model(image[:, :, y1:y2, x1:x2])  # (B, K, y2 - y1, x2 - x1)
            if logits is None:
                _check_classes(crop_logits, num_classes)
                logits = image.new_zeros((b, crop_logits.shape[1], h, w))
            logits[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    assert logits is not None and bool((count > 0).all())
    return logits / count


@torch.inference_mode()
def inference(
    model: nn.Module,
    image: torch.Tensor,
    mode: Mode = "whole",
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Logits of a batch of normalised images, on the whole image or by sliding windows.

    Args:
        model: Normalised images -> logits at the input size (put it in eval mode first).
        image: Normalised images ``(B, 3, H, W)``.
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (see :func:`slide_inference`).
        crop_size: Window ``(H, W)`` of ``"slide"``.
        stride: Window step ``(H, W)`` of ``"slide"``.
        num_classes: Expected number of classes ``K`` (checked), or ``None``.

    Returns:
        Logits ``(B, K, H, W)``.
    """
    if image.ndim != 4:
        raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(image.shape)}")
    if mode == "slide":
        return slide_inference(model, image, tuple(crop_size), tuple(stride), num_classes)
    if mode != "whole":
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    logits = model(image)
    _check_classes(logits, num_classes)
    if logits.shape[-2:] != image.shape[-2:]:
        logits = F.interpolate(
            logits, image.shape[-2:], mode="bilinear", align_corners=_align_corners(model)
        )
    return logits


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(H, W) * scale`` rounded half up, at least 1 pixel (mmcv's keep-ratio rounding)."""
    return max(1, int(size[0] * scale + 0.5)), max(1, int(size[1] * scale + 0.5))


@torch.inference_mode()
def aug_inference(
    model: nn.Module,
    image: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: Mode = "whole",
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    num_classes: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Test-time augmentation: softmax averaged over scales and horizontal flips (mmseg's TTA).

    For every scale (relative to the image size) and, with ``flip``, its mirror image, the
    logits are computed by :func:`inference`, flipped back, resized bilinearly to ``out_size``
    (with the model's ``align_corners``), turned into probabilities and averaged.

    Args:
        model: Normalised images -> logits at the input size.
        image: Normalised images ``(B, 3, H, W)``.
        scales: Resize factors, e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``.
        flip: Also use the horizontally flipped image at every scale.
        mode: ``"whole"`` or ``"slide"`` inference at each scale.
        crop_size: Window ``(H, W)`` of ``"slide"``.
        stride: Window step ``(H, W)`` of ``"slide"``.
        num_classes: Expected number of classes ``K`` (checked), or ``None``.
        out_size: ``(H, W)`` of the result (default: the image size).

    Returns:
        Class probabilities ``(B, K, *out_size)`` summing to 1 over ``K``.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive factors, got {scales}")
    size = tuple(image.shape[-2:])
    out_size = tuple(out_size) if out_size is not None else size
    probs: torch.Tensor | None = None
    n = 0
    for scale in scales:
        new_size = scaled_size(size, scale)
        scaled = image
        if new_size != size:
            scaled = F.interpolate(image, new_size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = inference(model, x, mode, crop_size, stride, num_classes)
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != out_size:
                logits = F.interpolate(
                    logits, out_size, mode="bilinear", align_corners=_align_corners(model)
                )
            p = logits.softmax(dim=1)
            probs = p if probs is None else probs + p
            n += 1
    assert probs is not None
    return probs / n


def scores_at(
    model: nn.Module,
    image: torch.Tensor,
    out_size: tuple[int, int],
    mode: Mode = "whole",
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class scores ``(B, K, *out_size)`` to take the argmax of: the logits of :func:`inference`
    resized bilinearly to ``out_size``, or with other ``scales`` or ``flip`` the probabilities of
    :func:`aug_inference` (same arguments)."""
    if flip or tuple(scales) != (1.0,):
        return aug_inference(
            model, image, scales, flip, mode, crop_size, stride, num_classes, out_size
        )
    logits = inference(model, image, mode, crop_size, stride, num_classes)
    if logits.shape[-2:] != tuple(out_size):
        logits = F.interpolate(
            logits, out_size, mode="bilinear", align_corners=_align_corners(model)
        )
    return logits


#: mmseg's multi-scale test ratios.
MS_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

__all__ = ["MS_SCALES", "Mode", "aug_inference", "inference", "scaled_size", "slide_inference"]
