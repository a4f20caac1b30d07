"""Datasets (Cityscapes, ADE20K, PASCAL VOC, synthetic context) and mmseg-style transforms.

Items are ``(image, mask)``: ``tv_tensors.Image`` uint8 ``(3, H, W)`` RGB, not normalised, and
``tv_tensors.Mask`` int64 ``(H, W)`` with class ids ``0..K-1`` and 255 = ignore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from isa_explorer.data import ade20k, cityscapes, voc
from isa_explorer.data.ade20k import ADE20KDataset
from isa_explorer.data.cityscapes import CityscapesDataset
from isa_explorer.data.common import (
    CorruptFileError,
    DatasetNotFoundError,
    EmptySplitError,
    OrphanImageError,
)
from isa_explorer.data.info import (
    ADE20K_INFO,
    ALIASES,
    CITYSCAPES_INFO,
    VOC_INFO,
    DatasetInfo,
    get_info,
)
from isa_explorer.data.transforms import RECIPES, build_eval_transforms, build_train_transforms
from isa_explorer.data.voc import VOCDataset

_READERS = {"cityscapes": CityscapesDataset, "ade20k": ADE20KDataset, "voc": VOCDataset}
_DOWNLOAD = {"cityscapes": cityscapes.DOWNLOAD, "ade20k": ade20k.DOWNLOAD, "voc": voc.DOWNLOAD}
DATASETS = (*_READERS, "folder", "synthetic-context", *ALIASES)


def build_dataset(
    name: str, root: str | Path | None, split: str, transforms: Any = None, **kwargs: Any
) -> Dataset:
    """Build a dataset by name.

    Args:
        name: ``"cityscapes"``, ``"ade20k"``, ``"voc"``, ``"voc-aug"`` (VOC whose ``"train"``
            split is the SBD-augmented ``"train_aug"``), ``"folder"`` (your own images and
            masks, :mod:`isa_explorer.data.folder`) or ``"synthetic-context"``.
        root: Dataset folder (ignored for ``"synthetic-context"``).
        split: Split name (``"train"``, ``"val"``, ...; each dataset lists its own).
        transforms: Optional callable ``(image, mask) -> (image, mask)``.
        **kwargs: ``length``, ``seed``, ``size`` for ``"synthetic-context"``; ``config``
            (:class:`~isa_explorer.data.folder.FolderConfig`) for ``"folder"``.

    Returns:
        A dataset of ``(image, mask)`` pairs with an ``info`` attribute (:class:`DatasetInfo`).

    Raises:
        ValueError: Unknown name, missing root, or keyword arguments the dataset does not take.
        DatasetNotFoundError: The dataset is not where ``root`` says.
    """
    key = name.lower()
    if key == "synthetic-context":
        from isa_explorer.data.synthetic import SyntheticContextDataset

        return SyntheticContextDataset(transforms=transforms, **kwargs)
    if key == "folder":
        from isa_explorer.data.folder import FolderConfig, FolderDataset

        if root is None:
            raise ValueError("the folder dataset needs root=<your dataset folder> (--data-root)")
        unknown = sorted(set(kwargs) - {"config"})
        if unknown:
            raise ValueError(f"folder takes config=FolderConfig(...), got {unknown}")
        config = FolderConfig.from_dict(kwargs.get("config"))
        return FolderDataset(root, split, transforms, config)
    if key == "voc-aug" and split == "train":
        split = "train_aug"
    key = ALIASES.get(key, key)
    if key not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if kwargs:
        raise ValueError(
            f"{name} takes no options besides root/split/transforms, got {sorted(kwargs)}"
        )
    if root is None:
        raise ValueError(f"{name} needs root=<folder of the dataset>. {_DOWNLOAD[key]}")
    return _READERS[key](root, split, transforms)


__all__ = [
    "ADE20K_INFO",
    "CITYSCAPES_INFO",
    "DATASETS",
    "RECIPES",
    "VOC_INFO",
    "ADE20KDataset",
    "CityscapesDataset",
    "CorruptFileError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "EmptySplitError",
    "OrphanImageError",
    "VOCDataset",
    "build_dataset",
    "build_eval_transforms",
    "build_train_transforms",
    "get_info",
]


def __getattr__(name: str) -> Any:
    # The synthetic dataset is loaded on first use only.
    if name in ("SyntheticContextDataset", "SYNTHETIC_INFO", "SYNTHETIC_CONTEXT_CLASSES"):
        from isa_explorer.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
