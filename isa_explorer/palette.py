"""The one palette and colouring module: class colours, colour masks and overlays.

Used by ``isa-explorer predict``, the app, TensorBoard's prediction grids and the notebooks,
so a model saved without a palette is coloured the same everywhere.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from torch import nn

#: Colour of label ids outside the palette (255 = ignore).
IGNORE_COLOUR = (0, 0, 0)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for models saved without a palette (golden-ratio hues)."""
    colours = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + 0.35 * (k % 2), 0.95 - 0.3 * (k // 2 % 2))
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return colours


def palette_or_default(
    palette: Sequence[Sequence[int]] | None, num_classes: int
) -> list[tuple[int, int, int]]:
    """``palette`` as RGB triples when given, else :func:`default_palette` of ``num_classes``."""
    if palette:
        return [tuple(int(c) for c in colour) for colour in palette]
    return default_palette(int(num_classes))


def palette_of(model: nn.Module) -> list[tuple[int, int, int]]:
    """The model's palette (saved with it), else :func:`default_palette` of its classes."""
    return palette_or_default(getattr(model, "palette", None), int(model.classes))


def colourise(labels: torch.Tensor, palette: Sequence[Sequence[int]]) -> torch.Tensor:
    """Colour a label map: ``(H, W)`` class ids -> ``uint8`` RGB ``(3, H, W)``.

    Ids outside the palette (e.g. 255 = ignore) get :data:`IGNORE_COLOUR`.
    """
    lut = torch.tensor([*map(tuple, palette), IGNORE_COLOUR], dtype=torch.uint8)  # (K + 1, 3)
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
