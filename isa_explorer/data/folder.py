"""Your own data: a folder of images and masks, as mmsegmentation's ``BaseSegDataset`` reads.

Three layouts, tried in this order for a split:

1. split folders: ``root/images/<split>/**/NAME.<any image>`` with
   ``root/masks/<split>/**/NAME.<png|tif|bmp>``, paired by their path below the split folder
   without the extension (subfolders allowed);
2. split lists: ``root/splits/<split>.txt``, one path per line below ``root/images`` and
   ``root/masks`` without extension (``#`` comments allowed);
3. one flat pair of folders ``root/images/**`` + ``root/masks/**``, split into ``train`` and
   ``val`` by a seeded shuffle (``val_ratio``, ``split_seed``).

Classes come from ``root/classes.json`` -- a list of names, or ``{"classes": [...],
"palette": [[r, g, b], ...], "ignore_index": 255, "reduce_zero_label": false}`` -- or from
:class:`FolderConfig` (``--classes a,b,c``), which wins. A mask is read per file: a
single-channel image (8- or 16-bit grey, or palette PNG: its indices) holds class ids; an RGB
mask holds the palette's colours. Pixels of ``ignore_index`` (255) carry no label; with
``reduce_zero_label`` the stored 0 is ignored and ``k`` becomes class ``k - 1`` (ADE20K style).
Values outside the classes, and colours outside the palette, also become ``ignore_index``;
:mod:`isa_explorer.data.folder_check` finds them before training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

from isa_explorer.config_dict import FromDict
from isa_explorer.data.common import (
    DatasetNotFoundError,
    EmptySplitError,
    OrphanImageError,
    PairedSegmentationDataset,
    Transforms,
    read_image,
)
from isa_explorer.data.info import DatasetInfo
from isa_explorer.images import IMAGE_EXTENSIONS, CorruptFileError
from isa_explorer.palette import default_palette

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
_INDEX_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L")
LAYOUT_HELP = (
    "expected root/images/<split>/ + root/masks/<split>/, or root/splits/<split>.txt with "
    "root/images/ + root/masks/, or root/images/ + root/masks/ split by val_ratio"
)


@dataclass
class FolderConfig(FromDict):
    """How a folder dataset is read (``TrainConfig.folder``; ``--classes`` on the command line).

    Args:
        classes: Class names (wins over ``classes.json``).
        palette: One RGB colour per class (for RGB masks and display); default: from
            ``classes.json``, else the project's palette.
        ignore_index: Mask value without a label.
        reduce_zero_label: Stored 0 -> ignore, ``k`` -> ``k - 1``.
        val_ratio: Share of a flat folder put in ``val``.
        split_seed: Seed of that split.
        image_mode: ``"rgb"`` (images read as 8-bit RGB), ``"raw"`` (every band at full
            precision, float32, for 16-bit slices and multi-band tiles) or ``"auto"``: raw if the
            first image is 16-bit or float, else rgb (4-band 8-bit tiles: set ``"raw"``).
        mean: Per-band mean of raw images (the data check computes it on ``train``).
        std: Per-band std of raw images.
    """

    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    ignore_index: int | None = None
    reduce_zero_label: bool | None = None
    val_ratio: float = 0.2
    split_seed: int = 0
    image_mode: str = "auto"
    mean: list[float] | None = None
    std: list[float] | None = None
    section = "folder"

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):  # "a,b,c" from --classes / --set
            self.classes = [c.strip() for c in self.classes.split(",") if c.strip()]
        if not 0.0 < float(self.val_ratio) < 1.0:
            raise ValueError(f"folder.val_ratio must be between 0 and 1, got {self.val_ratio}")
        if self.image_mode not in ("auto", "rgb", "raw"):
            raise ValueError(f"folder.image_mode must be auto, rgb or raw, got {self.image_mode!r}")


#: The mask value of unlabelled pixels once read, whatever the files store (the project's).
IGNORE = 255


@dataclass(frozen=True)
class FolderSpec:
    """The resolved classes and mask rules of one folder dataset (``ignore_index``: the value of
    unlabelled pixels in the mask *files*; once read they are :data:`IGNORE`, as everywhere)."""

    info: DatasetInfo
    reduce_zero_label: bool
    ignore_index: int = IGNORE

    @property
    def raw(self) -> bool:
        """Whether images are read at full precision (:func:`~isa_explorer.images.read_bands`)."""
        return self.info.image_mode == "raw"

    @property
    def code_to_class(self) -> dict[int, int]:
        """``{colour_code(palette colour): class id}`` (the first class of a repeated colour)."""
        codes = colour_codes(np.array(self.info.palette, np.int64).reshape(-1, 3)).tolist()
        return {code: codes.index(code) for code in codes}


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours -> ``(...)`` int64 codes ``r << 16 | g << 8 | b``."""
    c = rgb.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def resolve_spec(root: str | Path, cfg: FolderConfig | None = None) -> FolderSpec:
    """Classes, palette, ignore index and ``reduce_zero_label`` of ``root``.

    Raises:
        DatasetNotFoundError: ``root`` is missing.
        ValueError: No classes anywhere, or a malformed ``classes.json``.
    """
    root, cfg = Path(root).expanduser(), cfg or FolderConfig()
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset folder {root} does not exist; {LAYOUT_HELP}")
    meta: dict[str, Any] = {}
    path = root / "classes.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        meta = {"classes": data} if isinstance(data, list) else dict(data)
    names = cfg.classes or meta.get("classes")
    if not names:
        raise ValueError(
            f'no class names for {root}: write {path} (a list of names, or {{"classes": [...], '
            '"palette": [...]}}) or pass --classes name1,name2,...'
        )
    palette = cfg.palette or meta.get("palette") or default_palette(len(names))
    if len(palette) != len(names):
        raise ValueError(f"{len(names)} classes but {len(palette)} palette colours ({root})")
    ignore = cfg.ignore_index if cfg.ignore_index is not None else meta.get("ignore_index", 255)
    reduce = cfg.reduce_zero_label
    reduce = bool(meta.get("reduce_zero_label", False)) if reduce is None else bool(reduce)
    mode = cfg.image_mode if cfg.image_mode != "auto" else detect_image_mode(root, cfg)
    raw = mode == "raw"
    info = DatasetInfo(
        name=f"folder:{root.name}",
        class_names=tuple(str(n) for n in names),
        palette=tuple(tuple(int(v) for v in c) for c in palette),
        ignore_index=IGNORE,
        image_mode=mode,
        mean=tuple(float(v) for v in cfg.mean) if raw and cfg.mean else None,
        std=tuple(float(v) for v in cfg.std) if raw and cfg.std else None,
    )
    return FolderSpec(info, reduce, int(ignore))


#: PIL modes of images that are not 8-bit: read raw when ``image_mode`` is ``"auto"``.
HIGH_PRECISION_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def detect_image_mode(root: Path, cfg: FolderConfig) -> str:
    """``"raw"`` if the first image of ``root`` (train split first) is 16-bit or float, else
    ``"rgb"``."""
    for split in ("train", "val"):
        try:
            files = split_files(root, split, cfg)
        except (DatasetNotFoundError, EmptySplitError):
            continue
        for image in [p[0] for p in files.pairs] + files.orphan_images:
            try:
                with Image.open(image) as im:
                    return "raw" if im.mode in HIGH_PRECISION_MODES else "rgb"
            except (OSError, UnidentifiedImageError, ValueError):
                continue  # unreadable: the data check reports it
    return "rgb"


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """``{path below folder without extension: file}`` of every file with those extensions."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in extensions and not f.name.startswith("."):
                out.setdefault(f.relative_to(folder).with_suffix("").as_posix(), f)
    return out


@dataclass
class SplitFiles:
    """The pairs of one split and the files that have no partner."""

    pairs: list[tuple[Path, Path]]
    orphan_images: list[Path]
    orphan_masks: list[Path]
    layout: str


def split_files(root: str | Path, split: str, cfg: FolderConfig | None = None) -> SplitFiles:
    """Find the image/mask pairs of ``split`` under ``root`` (see the module's layouts).

    Raises:
        DatasetNotFoundError: No layout matches.
        EmptySplitError: The split is unknown or empty.
    """
    root, cfg = Path(root).expanduser(), cfg or FolderConfig()
    images_dir, masks_dir = root / "images", root / "masks"
    list_file = root / "splits" / f"{split}.txt"
    if (images_dir / split).is_dir():
        images = _files(images_dir / split, IMAGE_EXTENSIONS)
        masks = _files(masks_dir / split, MASK_EXTENSIONS)
        keys, layout = sorted(set(images) | set(masks)), "split folders"
    elif list_file.is_file():
        images, masks = _files(images_dir, IMAGE_EXTENSIONS), _files(masks_dir, MASK_EXTENSIONS)
        lines = [ln.split("#")[0].strip() for ln in list_file.read_text().splitlines()]
        known = {e.lower() for e in (*IMAGE_EXTENSIONS, *MASK_EXTENSIONS)}
        keys = [
            Path(ln).with_suffix("").as_posix() if Path(ln).suffix.lower() in known else ln
            for ln in (ln.replace("\\", "/") for ln in lines)
            if ln
        ]
        layout = f"split list {list_file.name}"
        missing = [k for k in keys if k not in images and k not in masks]
        if missing:
            raise EmptySplitError(
                f"{list_file} names {len(missing)} file(s) found in neither {images_dir} nor "
                f"{masks_dir}, e.g. {missing[0]!r}"
            )
    elif (root / "splits").is_dir():  # split lists exist, but not this one: never guess
        raise EmptySplitError(
            f"no {list_file} for the {split!r} split; write it, or remove {root / 'splits'} to "
            "split a flat folder by val_ratio"
        )
    elif images_dir.is_dir() and not any((images_dir / s).is_dir() for s in ("train", "val")):
        if split not in ("train", "val"):
            raise EmptySplitError(f"{root}: a flat folder has the splits train and val only")
        images, masks = _files(images_dir, IMAGE_EXTENSIONS), _files(masks_dir, MASK_EXTENSIONS)
        every = sorted(set(images) | set(masks))
        order = np.random.default_rng(cfg.split_seed).permutation(len(every))
        n_val = max(1, round(len(every) * cfg.val_ratio)) if len(every) > 1 else 0
        chosen = set(order[:n_val] if split == "val" else order[n_val:])
        keys = [k for i, k in enumerate(every) if i in chosen]
        layout = f"flat folder, val_ratio {cfg.val_ratio}, seed {cfg.split_seed}"
    else:
        raise DatasetNotFoundError(f"no {split!r} split in {root}: {LAYOUT_HELP}")
    pairs = [(images[k], masks[k]) for k in keys if k in images and k in masks]
    orphan_images = [images[k] for k in keys if k in images and k not in masks]
    orphan_masks = [masks[k] for k in keys if k in masks and k not in images]
    if not pairs and not orphan_images and not orphan_masks:
        raise EmptySplitError(f"{root}: the {split!r} split holds no images ({layout})")
    return SplitFiles(pairs, orphan_images, orphan_masks, layout)


def read_mask_array(path: Path) -> np.ndarray:
    """The stored mask: ``(H, W)`` int64 indices, or ``(H, W, 3)`` uint8 colours for RGB masks.

    Raises:
        CorruptFileError: Unreadable, or a mode that is neither index nor RGB.
    """
    try:
        with Image.open(path) as im:
            if im.mode in _INDEX_MODES:
                return np.array(im).astype(np.int64)  # palette PNGs give their indices
            if im.mode in ("RGB", "RGBA"):
                return np.array(im.convert("RGB"))
            mode = im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptFileError(f"cannot read mask {path}: {e}") from None
    raise CorruptFileError(
        f"mask {path} is a {mode!r} image; expected class indices (8/16-bit grey or "
        "palette PNG) or RGB colours of the palette"
    )


def to_class_ids(stored: np.ndarray, spec: FolderSpec) -> np.ndarray:
    """Stored mask (indices or colours) -> ``(H, W)`` int64 class ids, :data:`IGNORE` where
    there is no label, or the value/colour is not a class."""
    k = spec.info.num_classes
    if stored.ndim == 3:  # colours -> classes; colours outside the palette -> ignore
        table = spec.code_to_class
        keys = np.array(sorted(table), np.int64)  # (K,) sorted palette codes
        classes = np.array([table[c] for c in keys], np.int64)
        codes = colour_codes(stored)  # (H, W)
        at = np.minimum(np.searchsorted(keys, codes), len(keys) - 1)
        return np.where(keys[at] == codes, classes[at], IGNORE)
    unlabelled = stored == spec.ignore_index
    ids = stored - 1 if spec.reduce_zero_label else stored
    if spec.reduce_zero_label:
        unlabelled |= stored == 0
    return np.where(~unlabelled & (ids >= 0) & (ids < k), ids, IGNORE)


class FolderDataset(PairedSegmentationDataset):
    """A folder of images and masks (see the module docstring for layouts and masks).

    Args:
        root: The dataset folder.
        split: ``"train"``, ``"val"`` or any split the layout has.
        transforms: Optional ``(image, mask) -> (image, mask)``.
        config: Classes and split settings (:class:`FolderConfig`).

    Raises:
        DatasetNotFoundError, EmptySplitError: No such folder or split.
        OrphanImageError: An image without a mask (``--check-data`` lists them all).
        ValueError: No class names.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transforms | None = None,
        config: FolderConfig | None = None,
    ):
        self.config = config or FolderConfig()
        self.spec = resolve_spec(root, self.config)
        files = split_files(root, split, self.config)
        if files.orphan_images:
            raise OrphanImageError(
                f"{len(files.orphan_images)} image(s) of {root} {split} have no mask, e.g. "
                f"{files.orphan_images[0]}; `train/fit.py --check-data` lists every problem"
            )
        if not files.pairs:
            raise EmptySplitError(f"{root}: the {split!r} split has no image with a mask")
        super().__init__(files.pairs, self.spec.info, split, None, transforms)
        self.layout = files.layout

    def read_image_at(self, index: int) -> tv_tensors.Image:
        """8-bit RGB, or with ``image_mode="raw"`` the file's bands as float32 ``(C, H, W)``."""
        return read_image(self.pairs[index][0], self.spec.raw)

    def read_mask_at(self, index: int) -> tv_tensors.Mask:
        """The mask, index or colour, as class ids (:func:`to_class_ids`)."""
        stored = read_mask_array(self.pairs[index][1])
        return tv_tensors.Mask(torch.from_numpy(to_class_ids(stored, self.spec)))
