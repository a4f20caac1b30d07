"""The one image reader: any file Pillow decodes -> ``uint8`` RGB, the same way everywhere.

Datasets (:mod:`isa_explorer.data`), ``isa-explorer predict``, the app and the notebooks all
read images through :func:`read_rgb` (files) or :func:`to_rgb8` (decoded images and arrays).
The EXIF orientation is applied; grey and palette images become RGB, transparent ones are
composited over white; 16-bit images are scaled to 8 bits (``/ 257``), float images in ``0..1``
by 255, other ranges stretched to 0-255; animated images (GIF, WebP, APNG) give their first
frame. Each change is recorded in ``notes`` for the user. Images of more than
:data:`MAX_PIXELS` are refused before they are decoded; empty files are named as empty.

Problems raise :class:`CorruptFileError` (a ``ValueError``) naming the file and the fix, or
``FileNotFoundError``. The messages are the same wherever an image is read (the app, its API,
``isa-explorer predict``), so they speak of "the file" or "this image", never of an upload.
:func:`check_sides` is the one lower bound on an image's sides for the models' inputs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

#: The image formats read, by name, with their file name suffixes.
FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "WebP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "PPM": (".ppm",),
}
#: The formats as said to users: "PNG, JPEG, WebP, BMP, TIFF, GIF or PPM".
FORMAT_NAMES = ", ".join(list(FORMATS)[:-1]) + f" or {list(FORMATS)[-1]}"
#: File name suffixes treated as images when a folder is given.
IMAGE_EXTENSIONS = tuple(suffix for suffixes in FORMATS.values() for suffix in suffixes)
#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 80_000_000
#: Smallest side, in pixels, of an image given to a model (its features need a few cells per
#: side); the app, its API and ``isa-explorer predict`` refuse smaller images.
MIN_SIDE = 32


class CorruptFileError(ValueError):
    """A file that cannot be read as the image (or label) it should be; the message says why."""


class ImageArrayError(ValueError):
    """An array or image mode that is not an image this project can convert."""


class ImageSizeError(ValueError):
    """A readable image too small for a model (a side under :data:`MIN_SIDE` pixels)."""


def read_rgb(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (see the module docstring).

    Args:
        path: The image file.
        notes: When given, what was changed on the way is appended (for the user).

    Returns:
        ``(H, W, 3)`` uint8 array.

    Raises:
        FileNotFoundError: No file at ``path``.
        CorruptFileError: Not an image, truncated or corrupt, or over :data:`MAX_PIXELS`.
    """
    return _decode(path, lambda im: to_rgb8(im, notes))


def read_bands(path: str | Path) -> np.ndarray:
    """Read an image file at full precision: ``(C, H, W)`` float32 of the file's own values.

    For images that are not 8-bit RGB (16-bit grey slices, float or 4-band tiles): every band
    is kept (an alpha band too), nothing is rescaled. Same errors as :func:`read_rgb`.
    """

    def bands(im: Image.Image) -> np.ndarray:
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        a = np.asarray(im)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (H, W[, C]) -> (C, H, W)
        return np.ascontiguousarray(a, dtype=np.float32)

    return _decode(path, bands)


def _decode(path: str | Path, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open, size-check and decode ``path``, then ``convert`` the image; one message per failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path.name!r} is empty (0 bytes); use a {FORMAT_NAMES} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_pixels(im.size, repr(path.name))
                im.load()
                return convert(im)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        # PIL refuses the header's size before the file is decoded; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too many pixels"
        raise CorruptFileError(
            f"{path.name!r} is {size}, more than the {MAX_PIXELS / 1e6:.0f} MP limit; "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise CorruptFileError(
            f"{path.name!r} is not an image in a readable format; use a {FORMAT_NAMES} image"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, CorruptFileError):
            raise
        raise CorruptFileError(
            f"{path.name!r} looks like an image but could not be decoded ({err}); the file is "
            "probably truncated or corrupt: save it again"
        ) from None


def bands_to_rgb8(bands: np.ndarray) -> np.ndarray:
    """A viewable ``(H, W, 3)`` uint8 picture of ``(C, H, W)`` bands: the first three (or the
    one grey band), each stretched between its 1st and 99th percentile."""
    shown = bands[:3] if bands.shape[0] >= 3 else np.repeat(bands[:1], 3, axis=0)
    out = np.empty(shown.shape, np.uint8)
    for i, band in enumerate(shown):
        lo, hi = np.percentile(band, (1, 99))
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-12) * 255, 0, 255).round()
    return out.transpose(1, 2, 0)


def read_image(path: str | Path, notes: list[str] | None = None) -> torch.Tensor:
    """Read an image file as models take it: ``uint8`` RGB ``(3, H, W)`` (see :func:`read_rgb`).

    Args:
        path: The image file.
        notes: When given, what was changed on the way is appended (for the user).

    Raises:
        FileNotFoundError: No file at ``path``.
        CorruptFileError: The message names the file and says what to do.
    """
    rgb = read_rgb(path, notes)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def check_pixels(size: tuple[int, int], name: str = "this image") -> None:
    """Refuse ``(W, H)`` above :data:`MAX_PIXELS` before decoding."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise CorruptFileError(
            f"{name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), more than the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit; downscale it first"
        )


def check_sides(size: tuple[int, int], name: str = "this image") -> None:
    """Refuse an image of ``(W, H)`` pixels with a side under :data:`MIN_SIDE`.

    Raises:
        ImageSizeError: Naming the size, the limit and the fix.
    """
    w, h = size
    if min(w, h) < MIN_SIDE:
        raise ImageSizeError(
            f"{name} is {w}x{h} pixels; both sides must be at least {MIN_SIDE} pixels for the "
            "model: use a larger image"
        )


def to_rgb8(image: Image.Image | np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """A PIL image of any mode, or an array, -> ``(H, W, 3)`` uint8 RGB.

    Args:
        image: A PIL image (EXIF orientation applied), or an array ``(H, W)``,
            ``(H, W, 1|3|4)`` of any numeric dtype (see the module docstring for the scaling).
        notes: When given, what was changed on the way is appended.

    Raises:
        ImageArrayError: An array of another shape or type, or with NaN/inf values.
    """
    notes = [] if notes is None else notes
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, notes)
    im = image
    if getattr(im, "is_animated", False):  # opened at its first frame
        notes.append(f"animated image: the first of its {im.n_frames} frames is used")
    orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"rotated upright from its EXIF orientation ({orientation})")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im)
        if im.mode != "F" and a.min(initial=0) >= 0 and a.max(initial=0) <= 65535:
            a = a.astype(np.uint16)  # 16-bit PNGs often open as mode "I"
        return _array_to_rgb(a, notes)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("transparent pixels composited on white")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, im.convert("RGBA")).convert("RGB"))
    if im.mode != "RGB":
        notes.append(f"converted from {im.mode} to RGB")
        im = im.convert("RGB")
    return np.array(im)  # writable (np.asarray of a PIL image is read-only)


def _array_to_rgb(a: np.ndarray, notes: list[str]) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` array of any numeric dtype -> ``(H, W, 3)`` uint8."""
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageArrayError(
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
        raise ImageArrayError(f"unsupported image array type {a.dtype}")
    dtype, floating = a.dtype, np.issubdtype(a.dtype, np.floating)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageArrayError("the image holds NaN or infinite values")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if floating and lo >= 0 and hi <= 1.0:
        scale = 255.0
    elif dtype != np.uint16 and lo >= 0 and hi <= 255:
        scale = 1.0
    elif lo >= 0 and hi <= 65535:  # uint16 always
        scale = 255.0 / 65535.0
        notes.append("16-bit image scaled to 8 bits")
    else:
        span = max(hi - lo, 1e-12)
        a, scale = a - lo, 255.0 / span
        notes.append(f"values in [{lo:g}, {hi:g}] stretched to 0-255")
    return np.clip(a * scale, 0, 255).round().astype(np.uint8)
