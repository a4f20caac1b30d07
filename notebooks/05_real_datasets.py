# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Real datasets: layouts, labels and the training pipeline
#
# **What this notebook teaches.** How ISA Explorer meets the three benchmarks of the paper --
# Cityscapes, ADE20K and PASCAL VOC -- without any of them on this machine:
#
# - the official folder layout each reader expects, shown by building a *tiny fake copy* of each
#   dataset (a few generated PNGs) in a temporary folder and reading it with `build_dataset`;
# - the label conventions the readers apply (Cityscapes `labelIds -> trainIds`, ADE20K's
#   `reduce_zero_label`, VOC's palette PNGs) and the mmseg training pipeline;
# - the messages you get when a folder is missing.
#
# Converting released checkpoints, training with `train/fit.py` and evaluating like mmseg follow
# in notebook 6. Everything runs on the CPU in under a minute. For the real data, replace the temporary root by
# the folder you downloaded (the download links are in the error messages below and in
# `docs/mmseg_checkpoints.md`).

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from isa_explorer import palette
from isa_explorer.data import (
    RECIPES,
    DatasetNotFoundError,
    build_dataset,
    build_train_transforms,
    get_info,
)

_ = torch.manual_seed(0)
rng = np.random.default_rng(0)
workdir = tempfile.TemporaryDirectory(prefix="isa_datasets_")
ROOT = Path(workdir.name)
H, W = 64, 128  # tiny images: the layouts matter here, not the pixels

# %% [markdown]
# ## 1. Tiny scenes to fill the folders
#
# One generator draws a street-like scene as a map of *class names*; each dataset then stores it
# in its own label encoding. The image is each class's palette colour plus noise, so the pictures
# below are easy to read.


# %%
def scene(seed: int) -> np.ndarray:
    """An ``(H, W)`` array of class names: sky, building, road, sidewalk, a car, a tree."""
    r = np.random.default_rng(seed)
    names = np.full((H, W), "sky", dtype=object)
    horizon = int(r.integers(22, 30))
    names[horizon - int(r.integers(8, 16)) : horizon, :] = "building"
    names[horizon:, :] = "road"
    names[horizon : horizon + 6, : W // 3] = "sidewalk"
    x0 = int(r.integers(10, W - 40))
    names[horizon + 8 : horizon + 22, x0 : x0 + 30] = "car"
    tx = int(r.integers(W // 2, W - 12))
    names[horizon - 18 : horizon + 2, tx : tx + 10] = "tree"
    return names


def render(names: np.ndarray, colours: dict[str, tuple[int, int, int]], seed: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image: each class in its colour, plus noise."""
    img = np.zeros((*names.shape, 3), dtype=np.float64)
    for name, colour in colours.items():
        img[names == name] = colour
    noise = np.random.default_rng(seed).normal(0, 12, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def encode(names: np.ndarray, ids: dict[str, int]) -> np.ndarray:
    """Class names -> the stored label values of one dataset, ``(H, W)`` uint8."""
    out = np.zeros(names.shape, dtype=np.uint8)
    for name, value in ids.items():
        out[names == name] = value
    return out


def save_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette is not None:
        im.putpalette(palette)  # a palette PNG: pixels hold class ids, the palette their colours
    im.save(path)


def show_tree(root: Path, limit: int = 14) -> None:
    """Print the files under ``root`` (relative paths)."""
    files = sorted(p.relative_to(ROOT) for p in root.rglob("*") if p.is_file())
    for p in files[:limit]:
        print("  ", p)
    if len(files) > limit:
        print(f"   ... {len(files) - limit} more")


def colourise(mask: torch.Tensor, colours) -> np.ndarray:
    """Class-id mask ``(H, W)`` -> ``(H, W, 3)`` picture; ignored pixels (255) are black."""
    return palette.colourise(mask, colours).permute(1, 2, 0).numpy()


def show_items(dataset, n: int = 2, title: str = "") -> None:
    """Images and their class-id masks, as the dataset returns them."""
    info = dataset.info
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for i in range(n):
        image, mask = dataset[i]
        axes[0, i].imshow(image.permute(1, 2, 0).numpy())
        axes[1, i].imshow(colourise(mask, info.palette))
        present = [info.class_names[c] for c in mask.unique().tolist() if c != info.ignore_index]
        axes[1, i].set_title(", ".join(present), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    plt.tight_layout()
    plt.show()


# %% [markdown]
# ## 2. Cityscapes
#
# Layout: `leftImg8bit/{split}/{city}/*_leftImg8bit.png` and
# `gtFine/{split}/{city}/*_gtFine_labelIds.png` (or `*_labelTrainIds.png`, written by
# cityscapesscripts' `createTrainIdLabelImgs`, which the reader prefers when present). The
# `labelIds` files use the 34 ids of the full label set; the reader maps them to the 19 training
# classes with the official table, and everything else (ego vehicle, static, ...) to 255.

# %%
city_info = get_info("cityscapes")
city_ids = {  # labelIds of the official table (cityscapesscripts labels.py)
    "road": 7, "sidewalk": 8, "building": 11, "tree": 21, "sky": 23, "car": 26,
}  # fmt: skip
city_train = {"road": 0, "sidewalk": 1, "building": 2, "tree": 8, "sky": 10, "car": 13}
city_colours = {k: city_info.palette[v] for k, v in city_train.items()}
city_root = ROOT / "cityscapes"
seed = 0
for split, cities in (("train", ("aachen", "bonn")), ("val", ("frankfurt",))):
    for k, city in enumerate(cities):
        for frame in range(2):
            seed += 1
            names = scene(seed)
            stem = f"{city}_{k:06d}_{frame:06d}"
            save_png(
                city_root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                render(names, city_colours, seed),
            )
            label_ids = encode(names, city_ids)
            label_ids[-4:, :] = 1  # the ego vehicle (labelId 1): no train id -> ignored
            save_png(city_root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
show_tree(city_root)

cityscapes_val = build_dataset("cityscapes", city_root, "val")
print(cityscapes_val)
image, mask = cityscapes_val[0]
print("image", tuple(image.shape), image.dtype, "| mask", tuple(mask.shape), mask.dtype)
print("stored labelIds:", np.unique(np.array(Image.open(cityscapes_val.pairs[0][1]))).tolist())
print("train ids      :", mask.unique().tolist())
show_items(cityscapes_val, title="Cityscapes (fake): bottom rows = ego vehicle, ignored (black)")

# %% [markdown]
# ## 3. ADE20K
#
# Layout: `ADEChallengeData2016/images/{training,validation}/*.jpg` and
# `ADEChallengeData2016/annotations/{training,validation}/*.png`. The stored value 0 means
# "other objects": like mmseg (`reduce_zero_label=True`) the reader ignores it and shifts the
# 150 classes `1..150` to `0..149`.

# %%
ade_info = get_info("ade20k")
ade_stored = {  # stored value = class id + 1
    name: ade_info.class_names.index(name) + 1
    for name in ("sky", "building", "road", "sidewalk", "car", "tree")
}
ade_colours = {k: ade_info.palette[v - 1] for k, v in ade_stored.items()}
ade_root = ROOT / "ade" / "ADEChallengeData2016"
for split in ("training", "validation"):
    for i in range(2):
        seed = 100 + i + (10 if split == "validation" else 0)
        names = scene(seed)
        stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
        image_dir = ade_root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(names, ade_colours, seed)).save(image_dir / f"{stem}.jpg")
        stored = encode(names, ade_stored)
        stored[:3, :] = 0  # "other objects" -> ignored
        save_png(ade_root / "annotations" / split / f"{stem}.png", stored)
show_tree(ade_root.parent)

ade_val = build_dataset("ade20k", ade_root.parent, "val")  # the folder holding ADEChallengeData2016
print(ade_val)
_, mask = ade_val[0]
print("stored values:", np.unique(np.array(Image.open(ade_val.pairs[0][1]))).tolist())
print("class ids    :", mask.unique().tolist())
show_items(ade_val, title="ADE20K (fake): stored 0 (top rows) is ignored")

# %% [markdown]
# ## 4. PASCAL VOC 2012 (and the SBD-augmented split)
#
# Layout: `VOCdevkit/VOC2012/JPEGImages/*.jpg`, labels `SegmentationClass/*.png` stored as
# *palette* PNGs (the pixels hold class ids, the palette only colours them; 255 marks object
# borders), split lists `ImageSets/Segmentation/{train,val}.txt`. `"voc-aug"` reads the 10,582
# training images of `train_aug.txt` with labels in `SegmentationClassAug` (converted from SBD
# with mmseg's `voc_aug.py`). VOC has no road or sky: the scene's car and background are enough.

# %%
voc_info = get_info("voc")
voc_ids = {"car": voc_info.class_names.index("car")}  # everything else: background 0
voc_palette = [c for colour in voc_info.palette for c in colour]
voc_palette += [224, 224, 192] * (256 - len(voc_info.palette))  # VOC draws borders (255) cream
voc_base = ROOT / "voc" / "VOCdevkit" / "VOC2012"
lists = voc_base / "ImageSets" / "Segmentation"
lists.mkdir(parents=True)
ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063", "2007_000129"]}
for split, split_ids in ids.items():
    (lists / f"{split}.txt").write_text("\n".join(split_ids) + "\n")
    for i, image_id in enumerate(split_ids):
        seed = 200 + i + (10 if split == "val" else 0)
        names = scene(seed)
        (voc_base / "JPEGImages").mkdir(exist_ok=True)
        colours = {
            "car": voc_info.palette[voc_ids["car"]],
            "sky": (120, 150, 200),
            "road": (90, 80, 70),
        }
        Image.fromarray(render(names, colours, seed)).save(
            voc_base / "JPEGImages" / f"{image_id}.jpg"
        )
        label = encode(names, voc_ids)
        car = label > 0
        border = car ^ np.pad(car[1:-1, 1:-1], 1)  # a 1-pixel "void" ring, as VOC draws them
        label[border] = 255
        save_png(voc_base / "SegmentationClass" / f"{image_id}.png", label, voc_palette)
show_tree(voc_base.parents[1])

voc_val = build_dataset("voc", ROOT / "voc", "val")  # VOC2012, VOCdevkit or the folder above
print(voc_val, "| label mode:", Image.open(voc_val.pairs[0][1]).mode)
show_items(voc_val, title="VOC (fake): palette PNG labels, borders ignored")

# %% [markdown]
# ## 5. When the data is not where the reader looks
#
# Every reader names the folder it expected and where to download the data. A wrong root, a
# missing split list or a Cityscapes copy without `gtFine` each say so:

# %%
(ROOT / "city_without_labels" / "leftImg8bit" / "val").mkdir(parents=True)
for name, root, split in (
    ("cityscapes", ROOT / "city_without_labels", "val"),
    ("ade20k", ROOT / "nowhere", "train"),
    ("voc-aug", ROOT / "voc", "train"),
):
    try:
        build_dataset(name, root, split)
    except DatasetNotFoundError as err:
        print(f"{name}: {err}\n")

# %% [markdown]
# ## 6. The training pipeline
#
# `build_train_transforms` is mmseg's pipeline as torchvision `transforms.v2`: random rescale of
# the recipe's base scale (ratio 0.5-2), a crop in which no class covers more than 75 %,
# horizontal flip, photometric distortion, padding (mask 255). `RECIPES` holds the published
# scale and crop per dataset; here both are shrunk to our tiny images.

# %%
print("published recipes:", RECIPES)
train_tf = build_train_transforms(scale=(256, 64), crop_size=(48, 48))
cityscapes_train = build_dataset("cityscapes", city_root, "train", transforms=train_tf)
fig, axes = plt.subplots(2, 4, figsize=(10, 5))
for i in range(4):
    image, mask = cityscapes_train[0]  # the same item, four random draws
    axes[0, i].imshow(image.permute(1, 2, 0).numpy())
    axes[1, i].imshow(colourise(mask, city_info.palette))
for ax in axes.flat:
    ax.set_axis_off()
fig.suptitle("four training draws of one image (crop 48 x 48; black = ignore / padding)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Train on your own data
#
# Your own images and masks need no code: `build_dataset("folder", root, split)` reads
# `root/images/<split>/…` with `root/masks/<split>/…` paired by name (or split lists
# `root/splits/<split>.txt`, or one flat folder split by a seeded ratio), and the class names
# and palette from `root/classes.json` (or `--classes a,b,c`). A mask may hold class ids (8- or
# 16-bit grey, palette PNG) or the palette's RGB colours; each file is read as what it is.
# Before training, the data check scans every pair and names each problem's file.

# %%
import json  # noqa: E402

from PIL import Image  # noqa: E402

from isa_explorer.data.folder_check import check_folder  # noqa: E402

own = Path(workdir.name) / "my_fields"
classes = {
    "classes": ["soil", "crop", "water"],
    "palette": [[140, 90, 40], [60, 170, 60], [40, 90, 200]],
}
rng = np.random.default_rng(0)
for split, count in (("train", 6), ("val", 2)):
    for i in range(count):
        ids = np.zeros((48, 64), np.uint8)
        ids[:, rng.integers(8, 40) :] = 1  # a field of crops
        ids[rng.integers(30, 44) :, :] = 2  # a river at the bottom
        pixels = np.array(classes["palette"], np.uint8)[ids] + rng.integers(
            0, 30, (48, 64, 3), dtype=np.uint8
        )
        for sub, arr in (("images", pixels), ("masks", ids)):
            (own / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(own / sub / split / f"field_{i}.png")
(own / "classes.json").write_text(json.dumps(classes))
print(check_folder(own).format())

# %% [markdown]
# A mask with a value that is no class, and an image without its mask: the check names both
# files, and `train/fit.py` refuses to start until they are fixed (or `--allow-data-issues`).

# %%
Image.fromarray(np.full((48, 64), 7, np.uint8)).save(own / "masks" / "train" / "field_0.png")
(own / "masks" / "train" / "field_1.png").unlink()
print(check_folder(own).format())
field = build_dataset("folder", own, "val")
image, mask = field[0]
print(field, tuple(image.shape), "classes in the mask:", mask.unique().tolist())

# %% [markdown]
# The same check and the training, from the command line (the `folder` recipe: the ADE20K
# pipeline with the crop you set, the R-50-D8 model of `--head NAME`, ISANet by default, from the
# ImageNet-pretrained encoder; without internet access pass `--encoder-weights none` for random
# weights or `--encoder-weights FILE` for a local copy):
#
# ```bash
# python train/fit.py --config folder --data-root my_fields --check-data
# python train/fit.py --config folder --data-root my_fields --set crop_size=[256,256] \
#     --set iters=4000 --run-dir runs/fields
# python train/fit.py --config folder --head da --data-root my_fields --encoder-weights none \
#     --set crop_size=[256,256] --run-dir runs/fields-danet
# python train/evaluate.py --checkpoint runs/fields --dataset folder --data-root my_fields
# python app.py --checkpoint runs/fields     # with your class names and colours
# ```

# %%
workdir.cleanup()  # remove the temporary folders

# %% [markdown]
# ## Exercises
#
# 1. Add a `*_gtFine_labelTrainIds.png` next to one of the fake Cityscapes labels (train ids,
#    255 elsewhere) and check that the reader now prefers it for that image only.
# 2. Delete one label PNG of the fake ADE20K training split: which error do you get, and does it
#    name the file the reader expected?
# 3. Write a `train_aug.txt` list and a `SegmentationClassAug` folder for the fake VOC copy and
#    read `build_dataset("voc-aug", ..., "train")`. What happens for ids that are missing from
#    `SegmentationClassAug`?
# 4. Draw 20 training crops of one image with `cat_max_ratio=0.75` and with `1.0`: how often is
#    a crop mostly road?
# 5. Save one of the field masks as RGB colours of the palette instead of class ids, with one
#    pixel of a colour that is not in it: what does the data check report?
