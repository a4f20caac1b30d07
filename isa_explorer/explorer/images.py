"""Reading and validating the images a user gives the explorer.

Every image becomes an ``(H, W, 3)`` uint8 RGB array: EXIF rotation applied, grey / palette /
CMYK converted, alpha composited on white, 16-bit and float images rescaled to 8 bits. Images
with a side under :data:`MIN_SIDE` are refused; images whose longest side exceeds
:data:`MAX_SIDE` are resized down (aspect kept). Problems raise :class:`ImageInputError` with a
message meant for the user.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Smallest accepted side in pixels (the model's features need a few cells per side).
MIN_SIDE = 32
#: Longest side kept; larger images are resized down to it (CPU time and memory per image).
MAX_SIDE = 2048
#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 80_000_000


class ImageInputError(ValueError):
    """An input image the explorer cannot use; the message says why and what to do."""


@dataclass
class PreparedImage:
    """An image ready for the model.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB pixels.
        notes: What was changed on the way (conversions, resizing), for the user.
    """

    rgb: np.ndarray
    notes: list[str] = field(default_factory=list)


def load_image_file(path: str | Path) -> PreparedImage:
    """Open and prepare an uploaded image file.

    Args:
        path: Path of the file (a temporary upload file).

    Returns:
        The prepared image.

    Raises:
        ImageInputError: The file is missing, not an image, corrupt, too small or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError("no image file was received; upload a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            _check_pixels(im.size)
            im.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        # PIL refuses the header's size before the file is decoded; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "more pixels than PIL allows"
        raise ImageInputError(
            f"{path.name!r} is {size}, more than the {MAX_PIXELS / 1e6:.0f} MP this app "
            "decodes; downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageInputError(
            f"{path.name!r} is not an image PIL can read; upload a PNG, JPEG, WebP, BMP or TIFF "
            "image"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(
            f"{path.name!r} looks like an image but could not be decoded ({err}); the file is "
            "probably truncated or corrupt: save it again and re-upload"
        ) from None
    return prepare_image(im)


def prepare_image(image: Image.Image | np.ndarray | None) -> PreparedImage:
    """Validate and convert an image (PIL or array) to ``(H, W, 3)`` uint8 RGB.

    Args:
        image: A PIL image of any mode, or an array ``(H, W)``, ``(H, W, 1|3|4)`` of uint8,
            uint16 or float (floats in ``[0, 1]`` or ``[0, 255]``).

    Returns:
        The prepared image and notes on what was changed.

    Raises:
        ImageInputError: No image, an unsupported array, or a side under :data:`MIN_SIDE`.
    """
    if image is None:
        raise ImageInputError("no image given; pick an example or upload an image first")
    notes: list[str] = []
    if isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image, notes)
    elif isinstance(image, Image.Image):
        _check_pixels(image.size)
        rgb = _pil_to_rgb(image, notes)
    else:
        raise ImageInputError(f"expected an image, got {type(image).__name__}")
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageInputError(
            f"the image is {w}x{h} pixels; both sides must be at least {MIN_SIDE} pixels "
            "(upload a larger image)"
        )
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        notes.append(f"resized from {w}x{h} to {size[0]}x{size[1]} (longest side {MAX_SIDE})")
    return PreparedImage(np.ascontiguousarray(rgb), notes)


def _check_pixels(size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ImageInputError(
            f"the image is {w}x{h} pixels ({w * h / 1e6:.0f} MP), more than the "
            f"{MAX_PIXELS / 1e6:.0f} MP this app decodes; downscale it first"
        )


def _pil_to_rgb(im: Image.Image, notes: list[str]) -> np.ndarray:
    """Any PIL mode -> ``(H, W, 3)`` uint8, EXIF orientation applied."""
    orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"rotated upright from its EXIF orientation ({orientation})")
    if im.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(im).astype(np.uint16), notes)
    if im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode == "I" and a.min() >= 0 and a.max() <= 65535:
            a = a.astype(np.uint16)  # 16-bit PNGs often open as mode "I"
        return _array_to_rgb(a, notes)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("transparent pixels composited on white")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, im.convert("RGBA")).convert("RGB"))
    if im.mode != "RGB":
        notes.append(f"converted from {im.mode} to RGB")
        im = im.convert("RGB")
    return np.asarray(im)


def _array_to_rgb(a: np.ndarray, notes: list[str]) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` array of any numeric dtype -> ``(H, W, 3)`` uint8."""
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageInputError(
            f"expected an image array (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}"
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = _to_uint8(a, notes)
    if a.ndim == 2:
        notes.append("grey image repeated to RGB")
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.shape[-1] == 4:
        notes.append("transparent pixels composited on white")
        alpha = a[..., 3:].astype(np.float32) / 255.0
        a = (a[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return a


def _to_uint8(a: np.ndarray, notes: list[str]) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.number):
        raise ImageInputError(f"unsupported image array type {a.dtype}")
    dtype, floating = a.dtype, np.issubdtype(a.dtype, np.floating)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageInputError("the image holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if dtype == np.uint16:
        scale = 255.0 / 65535.0
        notes.append("16-bit image scaled to 8 bits")
    elif floating and lo >= 0 and hi <= 1.0:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    elif lo >= 0 and hi <= 65535:
        scale = 255.0 / 65535.0
        notes.append("16-bit image scaled to 8 bits")
    else:
        span = max(hi - lo, 1e-12)
        a, scale = a - lo, 255.0 / span
        notes.append(f"values in [{lo:g}, {hi:g}] stretched to 0-255")
    return np.clip(a * scale, 0, 255).round().astype(np.uint8)
