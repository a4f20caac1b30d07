"""What the dataset readers share: errors, image/label decoding and the paired-files dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from isa_explorer.data.info import DatasetInfo
from isa_explorer.images import CorruptFileError, read_bands
from isa_explorer.images import read_image as read_rgb_chw

Transforms = Callable[[tv_tensors.Image, tv_tensors.Mask], Any]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root or one of its official folders is missing."""


class OrphanImageError(FileNotFoundError):
    """An image has no label file next to it in the dataset layout."""


class EmptySplitError(ValueError):
    """A split holds no images, or the split name is unknown."""


def require_dir(path: Path, what: str, how_to_get: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DatasetNotFoundError` naming
    ``what`` it should hold and ``how_to_get`` the data there."""
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what} not found: expected the folder {path}. {how_to_get}")
    return path


def check_split(name: str, split: str, splits: Sequence[str]) -> None:
    """Raise :class:`EmptySplitError` if ``split`` is not one of the dataset's ``splits``."""
    if split not in splits:
        raise EmptySplitError(f"{name} has no split {split!r}; choose one of {', '.join(splits)}")


def make_lut(mapping: dict[int, int], default: int = 255) -> np.ndarray:
    """A 256-entry lookup table from stored label values to class ids (others -> ``default``)."""
    lut = np.full(256, default, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def read_image(path: Path, raw: bool = False) -> tv_tensors.Image:
    """Decode an image file by the project's one reader (:mod:`isa_explorer.images`): ``uint8``
    RGB ``(3, H, W)``, or with ``raw`` every band at full precision, float32 ``(C, H, W)``.

    Raises:
        CorruptFileError: If the file cannot be decoded (the message names the file).
    """
    try:
        data = torch.from_numpy(read_bands(path)) if raw else read_rgb_chw(path)
    except (CorruptFileError, FileNotFoundError) as err:
        raise CorruptFileError(
            f"cannot read image {path}: {err}. Re-download or remove it."
        ) from err
    return tv_tensors.Image(data)


def read_label(path: Path, lut: np.ndarray | None = None) -> tv_tensors.Mask:
    """Read a single-channel label PNG (grey or palette: the stored indices, never the colours)
    as ``int64`` class ids ``(H, W)``, mapped by the 256-entry ``lut`` if given (values above
    255, from 16-bit files, become 255).

    Raises:
        CorruptFileError: If the file cannot be decoded or is not a single-channel index image.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise CorruptFileError(
                    f"label {path} is a {im.mode!r} image; expected a single-channel index PNG "
                    "(grey or palette), not a colour rendering"
                )
            arr = np.array(im)  # palette images give their indices
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise CorruptFileError(
            f"cannot read label {path}: {err}. Re-download or remove it."
        ) from err
    if lut is not None:
        if arr.dtype == np.uint8:
            arr = lut[arr]
        else:
            arr = np.where((arr >= 0) & (arr < 256), lut[np.clip(arr, 0, 255)], 255)
    return tv_tensors.Mask(torch.from_numpy(arr.astype(np.int64)))


def pair_files(
    images: Sequence[Path], label_for: Callable[[Path], Path | None], name: str, where: Path
) -> list[tuple[Path, Path]]:
    """Pair each image with its label file ``label_for(image)`` (``None``: it has none);
    ``name`` (dataset and split) and ``where`` (the folder searched) are for messages.

    Raises:
        EmptySplitError: If ``images`` is empty.
        OrphanImageError: If an image has no label (the first such image is named).
    """
    if not images:
        raise EmptySplitError(f"{name}: no images found under {where}; is the download complete?")
    pairs, orphans = [], []
    for img in images:
        label = label_for(img)
        if label is None or not label.is_file():
            orphans.append(img)
        else:
            pairs.append((img, label))
    if orphans:
        expected = label_for(orphans[0])
        hint = f" (expected {expected})" if expected is not None else ""
        raise OrphanImageError(
            f"{name}: {len(orphans)} of {len(images)} images have no label file, e.g. "
            f"{orphans[0]}{hint}. Unpack the annotations next to the images, or remove the images."
        )
    return pairs


class PairedSegmentationDataset(Dataset):
    """Image/label file pairs read as ``(tv_tensors.Image uint8 (3,H,W), tv_tensors.Mask int64 (H,W))``.

    Args:
        pairs: ``(image_path, label_path)`` per item.
        info: Class names and palette of the dataset.
        split: Split name.
        lut: 256-entry table from stored label values to class ids (255 = ignore).
        transforms: Optional callable ``(image, mask) -> (image, mask)`` (torchvision v2).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        info: DatasetInfo,
        split: str,
        lut: np.ndarray | None = None,
        transforms: Transforms | None = None,
    ):
        self.pairs = list(pairs)
        self.info = info
        self.split = split
        self.lut = lut
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.pairs)

    def label_lut(self, index: int) -> np.ndarray | None:
        """The table mapping item ``index``'s stored label values to class ids."""
        return self.lut

    def read_image_at(self, index: int) -> tv_tensors.Image:
        """The image of item ``index`` (uint8 RGB here; subclasses may read other kinds)."""
        return read_image(self.pairs[index][0])

    def read_mask_at(self, index: int) -> tv_tensors.Mask:
        """The class ids of item ``index``."""
        return read_label(self.pairs[index][1], self.label_lut(index))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img_path, label_path = self.pairs[index]
        image, mask = self.read_image_at(index), self.read_mask_at(index)
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise CorruptFileError(
                f"image {img_path} is {tuple(image.shape[-2:])} but its label {label_path} is "
                f"{tuple(mask.shape)} (H, W); they must match"
            )
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, len={len(self)}, classes={self.info.num_classes})"
