"""Folder datasets of images that are not 8-bit RGB: 16-bit slices and multi-band tiles, kept
at full precision and normalised with their own statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from folder_helpers import (
    labels,
    private_home,  # noqa: F401  (autouse: data-check caches in the test's folder)
    tiny_fit_args,
    write_classes,
)
from PIL import Image

from isa_explorer.data import build_dataset
from isa_explorer.data.folder import FolderConfig
from isa_explorer.data.folder_check import check_folder
from isa_explorer.training.cli import main as fit_main


def _raw_dataset(root: Path, count: int = 3) -> dict[str, np.ndarray]:
    """16-bit grey slices (values up to 4000; 40x32, the smallest side a model takes is 32) with
    index masks; returns the written images."""
    write_classes(root)
    written = {}
    for split, n in (("train", count), ("val", 1)):
        for i in range(n):
            rng = np.random.default_rng(10 * i + len(split))
            slice16 = rng.integers(0, 4000, (32, 40)).astype(np.uint16)
            ids = labels(32, 40, i)
            ids[5:9, 5:9] = np.arange(16).reshape(4, 4) % 3
            for sub in ("images", "masks"):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(slice16).save(root / "images" / split / f"s{i}.png")
            Image.fromarray(ids.astype(np.uint8), "L").save(root / "masks" / split / f"s{i}.png")
            written[f"{split}/s{i}"] = slice16
    return written


def test_16_bit_slices_are_read_at_full_precision_with_their_own_statistics(tmp_path):
    root = tmp_path / "data"
    written = _raw_dataset(root)
    ds = build_dataset("folder", root, "train")
    image, _ = ds[0]
    assert ds.info.image_mode == "raw" and image.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), written["train/s0"][None].astype(np.float32))
    report = check_folder(root)
    assert report.ok and report.image_mode == "raw"
    train = np.stack([written[f"train/s{i}"] for i in range(3)]).astype(np.float64)
    np.testing.assert_allclose(report.mean, [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(report.std, [train.std()], rtol=1e-9)
    assert "1 band(s), mean / std per band" in report.format()


def test_four_band_tiles_keep_every_band(tmp_path):
    root = tmp_path / "data"
    write_classes(root)
    tile = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile, "RGBA").save(root / "images" / split / "t.png")
        Image.fromarray(labels(16, 16, 0).astype(np.uint8), "L").save(
            root / "masks" / split / "t.png"
        )
    ds = build_dataset("folder", root, "train", config=FolderConfig(image_mode="raw"))
    np.testing.assert_array_equal(ds[0][0].numpy(), tile.transpose(2, 0, 1).astype(np.float32))
    Image.fromarray(tile[..., :3], "RGB").save(root / "images" / "val" / "t.png")  # 3 bands
    report = check_folder(root, FolderConfig(image_mode="raw"))
    assert ("band count mismatch", "images/val/t.png") in [
        (p.kind, p.file) for p in report.problems
    ]


@pytest.mark.slow
def test_a_model_of_raw_slices_trains_predicts_and_carries_its_normalisation(tmp_path, capsys):
    from isa_explorer.evaluation.predict_cli import main as predict_main
    from isa_explorer.explorer import ExplorerModel
    from isa_explorer.pretrained import load_model

    root = tmp_path / "data"
    _raw_dataset(root)
    run = tmp_path / "run"
    assert fit_main(tiny_fit_args(root, run, iters=2)) == 0, capsys.readouterr().err
    model = load_model(run)
    report = check_folder(root)
    assert model.image_mode == "raw" and model.encoder.out_channels[0] == 1
    np.testing.assert_allclose(model.mean.flatten().tolist(), report.mean, rtol=1e-6)
    np.testing.assert_allclose(model.std.flatten().tolist(), report.std, rtol=1e-6)
    out = tmp_path / "pred"
    assert (
        predict_main([str(root / "images" / "val"), "--out", str(out), "--checkpoint", str(run)])
        == 0
    )
    labels = np.array(Image.open(out / "s0_labels.png"))
    assert labels.shape == (32, 40) and labels.max() < 3
    with pytest.raises(ValueError, match="raw 1-band images.*train/predict.py"):
        ExplorerModel(run)
