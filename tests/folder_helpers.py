"""Generated folder datasets for the folder-dataset tests: written pairs, read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CLASSES = ["sky", "road", "car"]
PALETTE = [[70, 130, 180], [128, 64, 128], [0, 0, 142]]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Data-check caches go to a folder of the test's own."""
    monkeypatch.setenv("ISA_EXPLORER_HOME", str(tmp_path / "home"))


def tiny_fit_args(root: Path, run: Path, iters: int) -> list[str]:
    """``train/fit.py`` arguments of a tiny CPU run of the folder recipe on ``root``."""
    argv = ["--config", "folder", "--data-root", str(root), "--run-dir", str(run), "--no-progress"]
    argv += ["--encoder-weights", "none"]  # offline: the recipe's ImageNet weights are not here
    for item in (
        "model.encoder_name=resnet18", "model.decoder_channels=16",
        "model.decoder_isa_channels=8", "model.aux_channels=8", "crop_size=[32,32]",
        f"iters={iters}", "batch_size=2", f"eval_interval={iters}", f"ckpt_interval={iters}",
        "amp=false", "channels_last=false", "workers=0",
    ):  # fmt: skip
        argv += ["--set", item]
    return argv


def labels(h: int, w: int, seed: int, k: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, k, (h, w))
    ids[0, :3] = 255  # a few unlabelled pixels
    return ids


def write_pair(root: Path, rel: str, ids: np.ndarray, kind: str = "index", seed: int = 0):
    """Write ``images/REL.png`` and ``masks/REL.png`` (mask as index, palette RGB or 16-bit)."""
    h, w = ids.shape
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    for sub in ("images", "masks"):
        (root / sub / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{rel}.png")
    if kind == "index":
        Image.fromarray(ids.astype(np.uint8), "L").save(root / "masks" / f"{rel}.png")
    elif kind == "rgb":
        colours = np.array(PALETTE + [[0, 0, 0]] * 253, np.uint8)
        rgb = colours[np.where(ids == 255, 3, ids)]
        rgb[ids == 255] = (255, 255, 255)  # not in the palette: read as ignore
        Image.fromarray(rgb, "RGB").save(root / "masks" / f"{rel}.png")
    elif kind == "uint16":
        Image.fromarray(ids.astype(np.uint16)).save(root / "masks" / f"{rel}.png")
    return image


def write_classes(root: Path, **extra) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(
        json.dumps({"classes": CLASSES, "palette": PALETTE, **extra})
    )


def assert_item(dataset, index: int, image: np.ndarray, ids: np.ndarray) -> None:
    got_image, got_mask = dataset[index]
    np.testing.assert_array_equal(got_image.permute(1, 2, 0).numpy(), image)
    np.testing.assert_array_equal(got_mask.numpy(), ids)
    assert got_mask.dtype == torch.int64
