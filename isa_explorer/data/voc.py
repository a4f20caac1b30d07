"""PASCAL VOC 2012 segmentation, with the SBD-augmented training split, in the official layout."""

from __future__ import annotations

from pathlib import Path

from isa_explorer.data.common import (
    DatasetNotFoundError,
    EmptySplitError,
    PairedSegmentationDataset,
    Transforms,
    check_split,
    make_lut,
    pair_files,
    require_dir,
)
from isa_explorer.data.info import VOC_INFO

SPLITS = ("train", "val", "trainval", "train_aug")
DOWNLOAD = (
    "Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ "
    "and untar it (it creates VOCdevkit/VOC2012)."
)
AUG_DOWNLOAD = (
    "The train_aug split needs the SBD annotations (Hariharan et al., "
    "http://home.bharathh.info/pubs/codes/SBD/download.html) converted to "
    "VOC2012/SegmentationClassAug/*.png with the list ImageSets/Segmentation/train_aug.txt "
    "(or aug.txt), as mmsegmentation's tools/dataset_converters/voc_aug.py writes them."
)
#: List files tried, in order, for the augmented split.
AUG_LISTS = ("train_aug.txt", "aug.txt")

#: Stored values are class ids already: 0..20 pass, 255 (object borders, "void") stays ignore.
VOC_LUT = make_lut({i: i for i in range(21)})


def find_voc_root(root: str | Path) -> Path:
    """Return the ``VOC2012`` folder given it, ``VOCdevkit`` or the folder containing ``VOCdevkit``.

    Raises:
        DatasetNotFoundError: If no candidate holds ``JPEGImages``.
    """
    root = Path(root).expanduser()
    candidates = (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")
    for cand in candidates:
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetNotFoundError(
        f"PASCAL VOC 2012 not found: expected a folder JPEGImages/ in one of "
        f"{', '.join(str(c) for c in candidates)}. {DOWNLOAD}"
    )


def read_id_list(path: Path) -> list[str]:
    """Image ids of a split list: one per line, as ``2007_000032`` or ``/JPEGImages/2007_000032.jpg
    /SegmentationClassAug/2007_000032.png`` (the first column's file stem is the id)."""
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


class VOCDataset(PairedSegmentationDataset):
    """PASCAL VOC 2012: 21 classes (background + 20), 255 = object borders / ignore.

    Layout under ``VOCdevkit/VOC2012``: ``JPEGImages/*.jpg``, palette PNGs
    ``SegmentationClass/*.png`` (their stored indices are the class ids, not their colours),
    split lists ``ImageSets/Segmentation/{train,val,trainval}.txt``. The ``train_aug`` split
    (10,582 images: VOC train + SBD minus VOC val) reads ``ImageSets/Segmentation/train_aug.txt``
    (or mmsegmentation's ``aug.txt``) and labels from ``SegmentationClassAug`` (falling back to
    ``SegmentationClass`` for ids not converted there).

    Args:
        root: ``VOCdevkit/VOC2012``, ``VOCdevkit`` or the folder containing ``VOCdevkit``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"train_aug"``.
        transforms: Optional callable ``(image, mask) -> (image, mask)``.

    Raises:
        DatasetNotFoundError: If the dataset folders or the split list are missing.
        EmptySplitError: If the split is unknown or its list is empty.
        OrphanImageError: If a listed image or its label is missing.
    """

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Transforms | None = None
    ):
        check_split("voc", split, SPLITS)
        base = find_voc_root(root)
        img_dir = base / "JPEGImages"
        lists = base / "ImageSets" / "Segmentation"
        label_dirs = [base / "SegmentationClass"]
        if split == "train_aug":  # SBD labels first, VOC's own for ids not converted there
            names, how = [lists / n for n in AUG_LISTS], AUG_DOWNLOAD
            label_dirs.insert(0, require_dir(base / "SegmentationClassAug", "SBD labels", how))
        else:
            names, how = [lists / f"{split}.txt"], DOWNLOAD
            require_dir(label_dirs[0], "VOC labels", how)
        list_file = next((p for p in names if p.is_file()), None)
        if list_file is None:
            expected = " or ".join(str(p) for p in names)
            raise DatasetNotFoundError(f"VOC {split} list not found: expected {expected}. {how}")
        ids = read_id_list(list_file)
        if not ids:
            raise EmptySplitError(f"voc {split}: the list {list_file} names no images")
        missing = [i for i in ids if not (img_dir / f"{i}.jpg").is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"voc {split}: {len(missing)} images listed in {list_file} are missing from "
                f"{img_dir}, e.g. {missing[0]}.jpg. {DOWNLOAD}"
            )

        def label_for(img: Path) -> Path:
            found = [d / f"{img.stem}.png" for d in label_dirs]
            return next((p for p in found if p.is_file()), found[0])

        images = [img_dir / f"{i}.jpg" for i in ids]
        pairs = pair_files(images, label_for, f"voc {split}", list_file)
        super().__init__(pairs, VOC_INFO, split, VOC_LUT, transforms)
