"""Segment single images: robust image reading, prediction, colour masks and overlays.

Example:
    >>> from isa_explorer.pretrained import load_default_model
    >>> model = load_default_model()
    >>> image = read_image("scene.png")  # uint8 (3, H, W) RGB, whatever the file's mode
    >>> labels = predict_image(model, image)  # int64 (H, W)
    >>> colour = colourise(labels, palette_of(model))
    >>> save_png(overlay(image, colour, 0.5), "scene_overlay.png")
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn
from torchvision import tv_tensors

from isa_explorer.data.common import CorruptFileError
from isa_explorer.data.transforms import KeepRatioResize
from isa_explorer.evaluation.inference import Mode, aug_inference, inference

#: File name endings read when a folder is given.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow image -> ``uint8`` RGB array ``(H, W, 3)``.

    Grey and palette images are expanded to RGB; 16/32-bit integer grey is scaled from the
    16-bit range (``/ 257``); float grey in ``0..1`` is scaled by 255 (else clipped to 0-255);
    transparent images are composited over white.
    """
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            arr = arr * 255 if arr.size and arr.max() <= 1.0 else arr
        else:
            arr = arr / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as the model expects it: ``uint8`` RGB ``(3, H, W)``.

    The EXIF orientation is applied (photos come out upright), and grey, palette, RGBA,
    CMYK and 16-bit files are converted (see :func:`to_rgb8`).

    Args:
        path: Image file.

    Returns:
        ``uint8`` tensor ``(3, H, W)``, 0-255.

    Raises:
        FileNotFoundError: No file at ``path``.
        CorruptFileError: The file is not an image Pillow can decode (or is truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = to_rgb8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptFileError(
            f"cannot read image {path}: {err}. The file is corrupt, truncated or not an image; "
            "re-save it as PNG/JPEG or remove it"
        ) from err
    except Image.DecompressionBombError as err:
        raise CorruptFileError(f"image {path} is too large to decode safely: {err}") from err
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image tensor (3, H, W), got {shape}")
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 (0-255) image, got {image.dtype}; use read_image()")


@torch.inference_mode()
def predict_image(
    model: nn.Module,
    image: torch.Tensor,
    *,
    mode: Mode = "whole",
    crop_size: tuple[int, int] = (769, 769),
    stride: tuple[int, int] = (513, 513),
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    scale: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Label map of one image (the model is put in eval mode; it runs on its own device).

    Args:
        model: A segmentation model with ``normalize`` (e.g. :class:`isa_explorer.ISANet`).
        image: ``uint8`` RGB ``(3, H, W)``, 0-255 (:func:`read_image`).
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
    _check_image(image)
    model.eval()
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    h, w = image.shape[-2:]
    if scale is not None:
        image = KeepRatioResize(scale)(tv_tensors.Image(image))
    x = model.normalize(image.as_subclass(torch.Tensor)[None].to(device).float())  # (1, 3, h, w)
    if len(scales) > 1 or flip or tuple(scales) != (1.0,):
        scores = aug_inference(model, x, scales, flip, mode, crop_size, stride, out_size=(h, w))
    else:
        scores = inference(model, x, mode, crop_size, stride)
        if scores.shape[-2:] != (h, w):
            align = bool(getattr(model, "align_corners", False))
            scores = F.interpolate(scores, (h, w), mode="bilinear", align_corners=align)
    return scores[0].argmax(0).cpu()


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for models saved without a palette (golden-ratio hues)."""
    colours = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (k % 2), 0.95 - 0.3 * (k // 2 % 2))
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return colours


def palette_of(model: nn.Module) -> list[tuple[int, int, int]]:
    """The model's palette (saved with it), else :func:`default_palette` of its classes."""
    palette = getattr(model, "palette", None)
    if palette:
        return [tuple(int(c) for c in colour) for colour in palette]
    return default_palette(int(model.classes))


def colourise(labels: torch.Tensor, palette: Sequence[Sequence[int]]) -> torch.Tensor:
    """Colour a label map: ``(H, W)`` class ids -> ``uint8`` RGB ``(3, H, W)``.

    Ids outside the palette (e.g. 255 = ignore) are black.
    """
    lut = torch.tensor([*map(tuple, palette), (0, 0, 0)], dtype=torch.uint8)  # (K + 1, 3)
    if lut.ndim != 2 or lut.shape[1] != 3:
        raise ValueError("palette must hold one (R, G, B) triple per class")
    k = len(palette)
    ids = labels.long().cpu()
    ids = torch.where((ids >= 0) & (ids < k), ids, k)
    return lut[ids].permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def overlay(image: torch.Tensor, colour: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a colour mask over an image: ``(1 - alpha) * image + alpha * colour``, ``uint8``.

    Args:
        image: ``uint8`` RGB ``(3, H, W)``.
        colour: ``uint8`` RGB ``(3, H, W)`` (:func:`colourise`).
        alpha: Opacity of the mask, 0 (image only) to 1 (mask only).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    if image.shape != colour.shape:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(colour.shape)} differ")
    mixed = (1 - alpha) * image.float().cpu() + alpha * colour.float().cpu()
    return mixed.round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Write a ``uint8`` RGB ``(3, H, W)`` tensor as a PNG file."""
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG")


def save_labels(labels: torch.Tensor, path: str | Path) -> None:
    """Write class ids ``(H, W)`` as a grey PNG (8-bit, or 16-bit beyond 255 classes)."""
    arr = labels.cpu().numpy()
    arr = arr.astype(np.uint8) if arr.max(initial=0) <= 255 else arr.astype(np.uint16)
    Image.fromarray(arr).save(path, format="PNG")


__all__ = [
    "IMAGE_EXTENSIONS",
    "colourise",
    "default_palette",
    "overlay",
    "palette_of",
    "predict_image",
    "read_image",
    "save_labels",
    "save_png",
    "to_rgb8",
]
