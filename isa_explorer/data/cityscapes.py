"""Cityscapes (fine annotations) in the official folder layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isa_explorer.data.common import (
    PairedSegmentationDataset,
    Transforms,
    check_split,
    make_lut,
    pair_files,
    require_dir,
)
from isa_explorer.data.info import CITYSCAPES_INFO

SPLITS = ("train", "val", "test")
DOWNLOAD = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip both into the dataset root."
)

#: Official ``labelId -> trainId`` (cityscapesscripts ``labels.py``); all other ids -> 255.
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
LABEL_ID_LUT = make_lut(LABEL_ID_TO_TRAIN_ID)
TRAIN_ID_LUT = make_lut({i: i for i in range(19)})

IMG_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"


class CityscapesDataset(PairedSegmentationDataset):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` labels as the 19 train ids.

    Layout under ``root``: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and, per image,
    ``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png`` (cityscapesscripts'
    ``createTrainIdLabelImgs``) if present, else ``*_gtFine_labelIds.png`` (mapped to train ids
    with the official table; ids without a train id become 255).

    Args:
        root: Folder holding ``leftImg8bit`` and ``gtFine``.
        split: ``"train"``, ``"val"`` or ``"test"`` (the official test labels are all ignore).
        transforms: Optional callable ``(image, mask) -> (image, mask)``.

    Raises:
        DatasetNotFoundError: If the root or a split folder is missing.
        EmptySplitError: If the split is unknown or holds no images.
        OrphanImageError: If an image has neither label file.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Transforms | None = None
    ):
        check_split("cityscapes", split, SPLITS)
        root = require_dir(Path(root).expanduser(), "Cityscapes root", DOWNLOAD)
        img_dir, gt_dir = (
            require_dir(root / sub / split, f"Cityscapes {what} of split {split!r}", DOWNLOAD)
            for sub, what in (("leftImg8bit", "images"), ("gtFine", "fine labels"))
        )
        images = sorted(img_dir.glob(f"*/*{IMG_SUFFIX}"))

        def label_for(img: Path) -> Path:
            stem = img.name[: -len(IMG_SUFFIX)]
            train_ids = gt_dir / img.parent.name / f"{stem}{TRAIN_IDS_SUFFIX}"
            return (
                train_ids if train_ids.is_file() else train_ids.with_name(stem + LABEL_IDS_SUFFIX)
            )

        pairs = pair_files(images, label_for, f"cityscapes {split}", img_dir)
        super().__init__(pairs, CITYSCAPES_INFO, split, transforms=transforms)
        self.uses_train_ids = [lbl.name.endswith(TRAIN_IDS_SUFFIX) for _, lbl in pairs]

    def label_lut(self, index: int) -> np.ndarray:
        """Train-id files pass through; label-id files go through the official table."""
        return TRAIN_ID_LUT if self.uses_train_ids[index] else LABEL_ID_LUT
