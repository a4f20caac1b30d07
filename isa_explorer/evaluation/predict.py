"""Prediction of image files: label maps at the image's size, and the files they are saved as.

``isa-explorer predict`` (:mod:`~isa_explorer.evaluation.predict_cli`) runs :func:`predict_image`
per file (read by :func:`isa_explorer.images.read_image`, coloured by :mod:`isa_explorer.palette`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors

from isa_explorer.data.transforms import KeepRatioResize
from isa_explorer.evaluation.inference import SLIDE_CROP, SLIDE_STRIDE, Mode, scores_at


def _check_image(image: torch.Tensor, model: nn.Module) -> None:
    shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
    if getattr(model, "image_mode", "rgb") == "raw":  # the file's own bands (read_bands)
        bands = len(model.mean.flatten())
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != bands:
            raise ValueError(
                f"this model takes raw images of {bands} band(s) (C, H, W) as read_bands() "
                f"reads them, got {shape}"
            )
        return
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 RGB image tensor (3, H, W), got {shape}")
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (0-255) image, got {image.dtype}; use read_image()")


@torch.inference_mode()
def predict_image(
    model: nn.Module,
    image: torch.Tensor,
    *,
    mode: Mode = "whole",
    crop_size: tuple[int, int] = SLIDE_CROP,
    stride: tuple[int, int] = SLIDE_STRIDE,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    scale: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Label map of one image (the model is put in eval mode; it runs on its own device).

    Args:
        model: A segmentation model with ``normalize`` (e.g. :class:`isa_explorer.ISANet`).
        image: ``uint8`` RGB ``(3, H, W)``, 0-255 (:func:`read_image`); for a model of raw
            images (``image_mode="raw"``) its bands ``(C, H, W)`` (:func:`read_bands`).
        mode: ``"whole"`` or ``"slide"`` inference.
        crop_size: Sliding window ``(H, W)``.
        stride: Sliding window step ``(H, W)``.
        scales: Test scales (several: softmax averaged, as :func:`aug_inference`).
        flip: Also average the horizontally flipped image.
        scale: Keep-ratio resize bound ``(long, short)`` applied first (as the dataset's test
            pipeline, e.g. ``(2048, 512)`` for ADE20K models); ``None``: the image's own size.

    Returns:
        ``int64`` class ids ``(H, W)`` at the image's size, on the CPU.
    """
    _check_image(image, model)
    model.eval()
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    h, w = image.shape[-2:]
    if scale is not None:
        image = KeepRatioResize(scale)(tv_tensors.Image(image))
    x = model.normalize(image.as_subclass(torch.Tensor)[None].to(device).float())  # (1, C, h, w)
    return scores_at(model, x, (h, w), mode, crop_size, stride, scales, flip)[0].argmax(0).cpu()


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a ``uint8`` RGB ``(3, H, W)`` tensor as a PNG file."""
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG")


def save_labels(labels: torch.Tensor, path: str | Path) -> None:
    """Write class ids ``(H, W)`` as a grey PNG (8-bit, or 16-bit beyond 255 classes)."""
    arr = labels.cpu().numpy()
    arr = arr.astype(np.uint8) if arr.max(initial=0) <= 255 else arr.astype(np.uint16)
    Image.fromarray(arr).save(path, format="PNG")


__all__ = ["predict_image", "save_labels", "save_png"]
