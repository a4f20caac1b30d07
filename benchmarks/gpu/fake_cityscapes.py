"""A generated dataset in the official Cityscapes layout, for tests and benchmarks.

:func:`write_fake_cityscapes` writes ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` and
``gtFine/{split}/{city}/*_gtFine_labelIds.png`` under a root, as the official archives unzip,
so :class:`~isa_explorer.data.cityscapes.CityscapesDataset` and ``train/fit.py --data-root``
read it like the real data. Each scene is road (labelId 7, train id 0) with one car block
(labelId 26, train id 13) whose pixels are brighter; the images are seeded noise, so a run
over them has no meaning beyond its cost (the published 1024x2048 size runs the published
recipe at full cost: the GPU check, ``python benchmarks/gpu/run.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from PIL import Image

#: labelIds of the scenes: the background and the block.
ROAD, CAR = 7, 26
#: The official Cityscapes image size ``(H, W)``.
FULL_SIZE = (1024, 2048)


def fake_scene(index: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene ``index``: a uint8 RGB image ``(H, W, 3)`` and its labelIds ``(H, W)``.

    The car block covers rows ``H/4 .. 3H/4`` and a band of columns that moves right by
    ``10/128`` of the width per index (at 64x128: rows 16-47, columns ``20 + 10 k`` to
    ``69 + 10 k``).
    """
    h, w = size
    rng = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (h, w, 3), generator=rng, dtype=torch.uint8)
    label = torch.full((h, w), ROAD, dtype=torch.uint8)
    left, right = (20 + 10 * index) * w // 128, (70 + 10 * index) * w // 128
    label[h // 4 : 3 * h // 4, left:right] = CAR
    image[label == CAR] = 200
    return image, label


def write_fake_cityscapes(
    root: str | Path,
    splits: Mapping[str, int],
    size: tuple[int, int] = (64, 128),
    compress_level: int = 1,
) -> Path:
    """Write ``splits[split]`` scenes per split in the Cityscapes layout under ``root``.

    Scene ``k`` of a split is ``fake_scene(k, size)`` in city ``city{k}`` (file stem
    ``city{k}_000000_000000``).

    Args:
        root: Dataset root (created).
        splits: Number of scenes per split, e.g. ``{"train": 4, "val": 1}``.
        size: ``(H, W)`` of every scene (:data:`FULL_SIZE` for the official one).
        compress_level: PNG compression (1: fast to write; the pixels are the same).

    Returns:
        ``root`` as a path.
    """
    root = Path(root)
    for split, count in splits.items():
        for k in range(count):
            image, label = fake_scene(k, size)
            stem = f"city{k}_000000_000000"
            for sub, arr, suffix in (
                ("leftImg8bit", image, "leftImg8bit"),
                ("gtFine", label, "gtFine_labelIds"),
            ):
                path = root / sub / split / f"city{k}" / f"{stem}_{suffix}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.numpy()).save(path, compress_level=compress_level)
    return root
