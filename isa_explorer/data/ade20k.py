"""ADE20K (SceneParsing150, ``ADEChallengeData2016``) in the official folder layout."""

from __future__ import annotations

from pathlib import Path

from isa_explorer.data.common import (
    DatasetNotFoundError,
    PairedSegmentationDataset,
    Transforms,
    check_split,
    make_lut,
    pair_files,
    require_dir,
)
from isa_explorer.data.info import ADE20K_INFO

#: Split name -> folder name on disk.
SPLITS = {"train": "training", "val": "validation"}
DOWNLOAD = (
    "Download ADEChallengeData2016.zip (http://data.csail.mit.edu/places/ADEchallenge/"
    "ADEChallengeData2016.zip) and unzip it into the dataset root."
)

#: ``reduce_zero_label``: stored 0 ("other") -> 255, stored k in 1..150 -> k - 1, others -> 255.
REDUCE_ZERO_LUT = make_lut({k: k - 1 for k in range(1, 151)})


def find_ade_root(root: str | Path) -> Path:
    """Return the ``ADEChallengeData2016`` folder given it or the folder that contains it.

    Raises:
        DatasetNotFoundError: If neither ``root`` nor ``root/ADEChallengeData2016`` holds
            ``images`` and ``annotations``.
    """
    root = Path(root).expanduser()
    for cand in (root / "ADEChallengeData2016", root):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DatasetNotFoundError(
        f"ADE20K not found: expected {root / 'ADEChallengeData2016'} (or {root} itself) to hold "
        f"the folders images/ and annotations/. {DOWNLOAD}"
    )


class ADE20KDataset(PairedSegmentationDataset):
    """ADE20K's 150 classes as mmsegmentation reads them (``reduce_zero_label=True``).

    Layout: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with labels
    ``ADEChallengeData2016/annotations/{training,validation}/*.png`` of the same stem.
    The stored value 0 ("other objects") becomes 255 and ``k`` becomes class ``k - 1``.

    Args:
        root: ``ADEChallengeData2016`` or the folder containing it.
        split: ``"train"`` or ``"val"``.
        transforms: Optional callable ``(image, mask) -> (image, mask)``.

    Raises:
        DatasetNotFoundError: If the dataset folders are missing.
        EmptySplitError: If the split is unknown or holds no images.
        OrphanImageError: If an image has no annotation.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Transforms | None = None
    ):
        check_split("ade20k", split, tuple(SPLITS))
        base = find_ade_root(root)
        folder = SPLITS[split]
        img_dir = require_dir(base / "images" / folder, f"ADE20K {split} images", DOWNLOAD)
        ann_dir = require_dir(base / "annotations" / folder, f"ADE20K {split} labels", DOWNLOAD)
        images = sorted(img_dir.glob("*.jpg"))
        pairs = pair_files(images, lambda p: ann_dir / f"{p.stem}.png", f"ade20k {split}", img_dir)
        super().__init__(pairs, ADE20K_INFO, split, REDUCE_ZERO_LUT, transforms)
