"""Dataset readers on tiny fake copies of the official Cityscapes, ADE20K and VOC layouts."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from isa_explorer.data import (
    ADE20KDataset,
    CityscapesDataset,
    CorruptFileError,
    DatasetNotFoundError,
    EmptySplitError,
    OrphanImageError,
    VOCDataset,
    build_dataset,
    get_info,
)
from isa_explorer.data.info import VOC_INFO

H, W = 12, 16


def save(path: Path, arr: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)  # grey -> palette image; the array holds the indices
    im.save(path)
    return path


def rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def make_cityscapes(root: Path, split: str = "train", cities=("aachen", "bonn")) -> list[Path]:
    """One image per city; its labelIds hold ids 7 (road), 26 (car), 4 (static, no train id)."""
    images = []
    for k, city in enumerate(cities):
        stem = f"{city}_000000_00001{k}"
        images.append(save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(k)))
        lab = np.full((H, W), 7, np.uint8)
        lab[:, : 4 + k] = 26
        lab[0] = 4
        save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", lab)
    return images


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    images = make_cityscapes(tmp_path)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.info.num_classes == 19
    for k, img_path in enumerate(images):
        image, mask = ds[k]
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64 and mask.shape == (H, W)
        # Pairing: the k-th item is the k-th image (lossless PNG) with its own label.
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(Image.open(img_path))))
        assert (mask[0] == 255).all()  # id 4 "static" has no train id
        assert (mask[1:, : 4 + k] == 13).all() and (mask[1:, 4 + k :] == 0).all()


def test_cityscapes_prefers_label_train_ids(tmp_path):
    make_cityscapes(tmp_path)
    gt = tmp_path / "gtFine" / "train" / "bonn" / "bonn_000000_000011_gtFine_labelTrainIds.png"
    save(gt, np.full((H, W), 18, np.uint8))  # as createTrainIdLabelImgs writes: bicycle
    ds = CityscapesDataset(tmp_path, "train")
    assert torch.unique(ds[1][1]).tolist() == [18]  # the train-id file, unmapped
    assert set(torch.unique(ds[0][1]).tolist()) == {0, 13, 255}  # other city: labelIds


def test_cityscapes_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cityscapes-dataset.com") as err:
        CityscapesDataset(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(err.value)
    make_cityscapes(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"leftImg8bit/val"):
        CityscapesDataset(tmp_path, "val")
    with pytest.raises(EmptySplitError, match="train, val, test"):
        CityscapesDataset(tmp_path, "training")
    orphan = save(tmp_path / "leftImg8bit/train/bonn/bonn_000001_000000_leftImg8bit.png", rgb(3))
    with pytest.raises(OrphanImageError, match="bonn_000001_000000") as err:
        CityscapesDataset(tmp_path, "train")
    assert "1 of 3 images" in str(err.value) and isinstance(err.value, FileNotFoundError)
    orphan.unlink()
    (tmp_path / "leftImg8bit" / "test" / "x").mkdir(parents=True)
    (tmp_path / "gtFine" / "test").mkdir(parents=True)
    with pytest.raises(EmptySplitError, match="no images"):
        CityscapesDataset(tmp_path, "test")


def test_corrupt_or_colour_label_names_the_file(tmp_path):
    make_cityscapes(tmp_path)
    bad = tmp_path / "gtFine/train/aachen/aachen_000000_000010_gtFine_labelIds.png"
    bad.write_bytes(b"\x89PNG not really")
    ds = CityscapesDataset(tmp_path, "train")
    with pytest.raises(CorruptFileError, match="aachen_000000_000010_gtFine_labelIds.png"):
        ds[0]
    assert isinstance(CorruptFileError("x"), ValueError)
    save(bad, rgb(9))  # a colour rendering instead of ids
    with pytest.raises(CorruptFileError, match="single-channel"):
        ds[0]
    save(bad, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(CorruptFileError, match="must match"):
        ds[0]


def make_ade(base: Path, folder: str = "training", n: int = 2) -> None:
    for k in range(n):
        save(base / "images" / folder / f"ADE_{folder[:5]}_{k:08d}.jpg", rgb(k))
        ann = np.zeros((H, W), np.uint8)  # 0 = "other objects"
        ann[:, 4:] = 1 + k  # wall (k = 0) / building
        ann[:, 10:] = 150  # flag, the last class
        save(base / "annotations" / folder / f"ADE_{folder[:5]}_{k:08d}.png", ann)


@pytest.mark.parametrize("nested", [True, False])
def test_ade20k_reduces_zero_label(tmp_path, nested):
    base = tmp_path / "ADEChallengeData2016" if nested else tmp_path
    make_ade(base)
    make_ade(base, "validation", 1)
    ds = ADE20KDataset(tmp_path, "train")
    assert len(ds) == 2 and len(ADE20KDataset(tmp_path, "val")) == 1
    assert ds.info.num_classes == 150 and ds.info.class_names[-1] == "flag"
    for k in range(2):
        image, mask = ds[k]
        assert image.shape == (3, H, W) and image.dtype == torch.uint8
        assert (mask[:, :4] == 255).all() and (mask[:, 4:10] == k).all()
        assert (mask[:, 10:] == 149).all()


def test_ade20k_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="ADEChallengeData2016.zip") as err:
        ADE20KDataset(tmp_path, "train")
    assert str(tmp_path / "ADEChallengeData2016") in str(err.value)
    make_ade(tmp_path)
    save(tmp_path / "images/training/ADE_train_00000099.jpg", rgb(5))
    with pytest.raises(OrphanImageError, match="ADE_train_00000099.jpg"):
        ADE20KDataset(tmp_path, "train")
    with pytest.raises(EmptySplitError, match="train, val"):
        ADE20KDataset(tmp_path, "validation")


VOC_PALETTE = [c for rgb_ in VOC_INFO.palette for c in rgb_] + [224, 224, 192] * 235


def make_voc(voc: Path, ids: dict[str, list[str]]) -> None:
    """VOC2012 with palette labels: person (15) on background, 255 border, per image."""
    all_ids = sorted({i for v in ids.values() for i in v})
    for k, name in enumerate(all_ids):
        save(voc / "JPEGImages" / f"{name}.jpg", rgb(k))
        lab = np.zeros((H, W), np.uint8)
        lab[3:9, 4 + k : 10 + k] = 15
        lab[2, :] = 255
        save(voc / "SegmentationClass" / f"{name}.png", lab, VOC_PALETTE)
    for split, names in ids.items():
        lst = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        lst.parent.mkdir(parents=True, exist_ok=True)
        lst.write_text("".join(f"{n}\n" for n in names))


@pytest.mark.parametrize("given", ["parent", "VOCdevkit", "VOC2012"])
def test_voc_reads_palette_indices_and_lists(tmp_path, given):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    make_voc(voc, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000040"]})
    root = {"parent": tmp_path, "VOCdevkit": tmp_path / "VOCdevkit", "VOC2012": voc}[given]
    assert Image.open(voc / "SegmentationClass" / "2007_000032.png").mode == "P"
    ds = VOCDataset(root, "train")
    assert len(ds) == 2 and len(VOCDataset(root, "val")) == 1 and ds.info.num_classes == 21
    for k in range(2):
        _, mask = ds[k]
        assert set(torch.unique(mask).tolist()) == {0, 15, 255}
        assert (mask[2] == 255).all() and (mask[3:9, 4 + k : 10 + k] == 15).all()
    with pytest.raises(DatasetNotFoundError, match=r"trainval\.txt"):
        VOCDataset(root, "trainval")


def test_voc_train_aug(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    make_voc(voc, {"train": ["2007_000032"], "val": ["2007_000033"]})
    with pytest.raises(DatasetNotFoundError, match="SBD"):
        VOCDataset(tmp_path, "train_aug")
    save(voc / "JPEGImages" / "2008_000002.jpg", rgb(7))
    save(voc / "SegmentationClassAug" / "2008_000002.png", np.full((H, W), 3, np.uint8))
    aug = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    aug.write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
        "/JPEGImages/2008_000002.jpg /SegmentationClassAug/2008_000002.png\n"
    )
    ds = build_dataset("voc-aug", tmp_path, "train")  # "train" of voc-aug is train_aug
    assert ds.split == "train_aug" and len(ds) == 2
    assert torch.unique(ds[1][1]).tolist() == [3]  # grey SBD label from SegmentationClassAug
    assert set(torch.unique(ds[0][1]).tolist()) == {0, 15, 255}  # falls back to VOC's own
    assert build_dataset("voc-aug", tmp_path, "val").split == "val"
    aug.write_text(aug.read_text() + "2008_000003\n")
    save(voc / "JPEGImages" / "2008_000003.jpg", rgb(8))
    with pytest.raises(OrphanImageError, match="2008_000003"):
        VOCDataset(tmp_path, "train_aug")


def test_voc_missing_root_and_listed_image(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="host.robots.ox.ac.uk") as err:
        VOCDataset(tmp_path, "val")
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in str(err.value)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    make_voc(voc, {"train": ["2007_000032"], "val": ["2007_000033"]})
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2009_999999\n")
    with pytest.raises(DatasetNotFoundError, match="2009_999999.jpg"):
        VOCDataset(tmp_path, "val")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n")
    with pytest.raises(EmptySplitError, match="names no images"):
        VOCDataset(tmp_path, "val")


def test_build_dataset_dispatch(tmp_path):
    make_cityscapes(tmp_path / "cs")
    make_ade(tmp_path / "ade" / "ADEChallengeData2016")
    make_voc(tmp_path / "voc" / "VOC2012", {"train": ["2007_000032"]})
    assert isinstance(build_dataset("cityscapes", tmp_path / "cs", "train"), CityscapesDataset)
    assert isinstance(build_dataset("ADE20K", str(tmp_path / "ade"), "train"), ADE20KDataset)
    assert isinstance(build_dataset("voc", tmp_path / "voc", "train"), VOCDataset)
    assert get_info("voc-aug") is VOC_INFO and get_info("Cityscapes").num_classes == 19
    with pytest.raises(ValueError, match="unknown dataset 'coco'"):
        build_dataset("coco", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_info("coco")
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("ade20k", None, "train")
    with pytest.raises(ValueError, match="length"):
        build_dataset("cityscapes", tmp_path / "cs", "train", length=3)
    flip = lambda image, mask: (image.flip(-1), mask.flip(-1))  # noqa: E731
    plain = build_dataset("voc", tmp_path / "voc", "train")
    flipped = build_dataset("voc", tmp_path / "voc", "train", transforms=flip)
    assert torch.equal(flipped[0][1], plain[0][1].flip(-1))


def test_build_synthetic_context():
    ds = build_dataset("synthetic-context", None, "train", length=3, seed=1, size=(96, 192))
    assert len(ds) == 3 and ds.info is get_info("synthetic-context")
    image, mask = ds[0]
    assert image.shape == (3, 96, 192) and mask.shape == (96, 192)
