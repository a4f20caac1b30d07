"""Reading and validating the images a user gives the explorer.

Every image becomes an ``(H, W, 3)`` uint8 RGB array by the project's one reader
(:mod:`isa_explorer.images`: EXIF rotation, grey / palette / CMYK, alpha on white, 16-bit and
float rescaled), with its limits and messages, the same as ``isa-explorer predict``'s: sides
under :data:`MIN_SIDE` are refused. The app also resizes a longest side over :data:`MAX_SIDE`
down (aspect kept), to bound an interactive request. Problems raise :class:`ImageInputError`
(an :class:`ExplorerError`) with a message for the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer.images import (
    FORMAT_NAMES,
    MIN_SIDE,
    CorruptFileError,
    ImageArrayError,
    ImageSizeError,
    check_pixels,
    check_sides,
    read_rgb,
    to_rgb8,
)

#: Longest side kept; larger images are resized down to it (CPU time and memory per image).
MAX_SIDE = 2048


class ExplorerError(ValueError):
    """A request the explorer cannot answer; the message is for the user."""


class ImageInputError(ExplorerError):
    """An input image the explorer cannot use; the message says why and what to do."""


@dataclass
class CheckedImage:
    """An image checked (and converted) for the model.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB pixels.
        notes: What was changed on the way (conversions, resizing), for the user.
    """

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


def load_image_file(path: str | Path) -> CheckedImage:
    """Open and check an uploaded image file (read by :func:`isa_explorer.images.read_rgb`).

    Args:
        path: Path of the file (a temporary upload file).

    Returns:
        The checked image.

    Raises:
        ImageInputError: The file is missing, not an image, corrupt, too small or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"no image file was received; upload a {FORMAT_NAMES} image")
    notes: list[str] = []
    try:
        rgb = read_rgb(path, notes)
    except CorruptFileError as err:
        raise ImageInputError(str(err)) from None
    return _checked(rgb, notes, repr(path.name))


def check_image(image: Image.Image | np.ndarray | None) -> CheckedImage:
    """Validate and convert an image (PIL or array) to ``(H, W, 3)`` uint8 RGB.

    Args:
        image: A PIL image of any mode, or an array ``(H, W)``, ``(H, W, 1|3|4)`` of uint8,
            uint16 or float (floats in ``[0, 1]`` or ``[0, 255]``).

    Returns:
        The checked image and notes on what was changed.

    Raises:
        ImageInputError: No image, an unsupported array, or a side under :data:`MIN_SIDE`.
    """
    if image is None:
        raise ImageInputError("no image given; pick an example or upload an image first")
    if not isinstance(image, np.ndarray | Image.Image):
        raise ImageInputError(f"expected an image, got {type(image).__name__}")
    notes: list[str] = []
    try:
        if isinstance(image, Image.Image):
            check_pixels(image.size)
        rgb = to_rgb8(image, notes)
    except (CorruptFileError, ImageArrayError) as err:
        raise ImageInputError(str(err)) from None
    return _checked(rgb, notes)


def _checked(rgb: np.ndarray, notes: list[str], name: str = "this image") -> CheckedImage:
    """Refuse sides under :data:`MIN_SIDE`; resize a longest side over :data:`MAX_SIDE`."""
    h, w = rgb.shape[:2]
    try:
        check_sides((w, h), name)
    except ImageSizeError as err:
        raise ImageInputError(str(err)) from None
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        notes.append(f"resized from {w}x{h} to {size[0]}x{size[1]} (longest side {MAX_SIDE})")
    return CheckedImage(np.ascontiguousarray(rgb), notes)
