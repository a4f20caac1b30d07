"""Inference modes (whole, slide, multi-scale + flip), evaluate(), and the train/evaluate.py CLI."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from isa_explorer.data import SYNTHETIC_INFO, build_dataset, build_eval_transforms
from isa_explorer.evaluation import ConfusionMatrix, aug_inference, evaluate, inference
from isa_explorer.evaluation.inference import slide_inference

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "train" / "evaluate.py"


class PixelModel(nn.Module):
    """Logits at a pixel from that pixel only: a 1x1 convolution."""

    def __init__(self, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def normalize(self, image):
        return image / 255

    def forward(self, x):
        return self.conv(x)


class PaletteOracle(nn.Module):
    """Classifies a pixel by its nearest palette colour (images drawn from the labels)."""

    def __init__(self, palette):
        super().__init__()
        self.register_buffer("palette", torch.tensor(palette, dtype=torch.float32))

    def forward(self, x):  # (B, 3, H, W) 0-255 -> (B, K, H, W)
        return -((x[:, None] - self.palette[None, :, :, None, None]) ** 2).sum(2)


def test_slide_equals_whole_for_a_pixelwise_model():
    model = PixelModel()
    image = torch.randn(2, 3, 30, 41)
    whole = inference(model, image, "whole")
    for crop, stride in [((16, 16), (8, 8)), ((16, 24), (11, 13)), ((64, 64), (32, 32))]:
        slide = inference(model, image, "slide", crop, stride, num_classes=4)
        assert slide.shape == (2, 4, 30, 41)
        torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_windows_follow_mmseg():
    crops = []

    class Recorder(nn.Module):
        def forward(self, x):
            crops.append(tuple(x.shape[-2:]))
            return torch.ones(x.shape[0], 2, *x.shape[-2:])

    out = slide_inference(Recorder(), torch.zeros(1, 3, 1024, 2048), (769, 769), (513, 513))
    assert crops == [(769, 769)] * 8  # 2 rows x 4 columns, the last ones moved inside
    assert torch.equal(out, torch.ones(1, 2, 1024, 2048))  # overlaps averaged, not summed
    crops.clear()
    slide_inference(Recorder(), torch.zeros(1, 3, 20, 1000), (769, 769), (513, 513))
    assert crops == [(20, 769), (20, 769)]  # smaller than the crop: the whole height, unpadded


def block_image(h: int = 64, w: int = 96, block: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    colours = torch.rand(1, 3, h // block, w // block, generator=g)
    return colours.repeat_interleave(block, 2).repeat_interleave(block, 3)  # (1, 3, h, w)


def test_multi_scale_and_flip_of_a_pixelwise_model_equal_single_scale():
    model, image = PixelModel(), block_image()
    single = inference(model, image).softmax(1)
    flipped = aug_inference(model, image, flip=True)
    torch.testing.assert_close(flipped, single, rtol=1e-5, atol=1e-6)
    scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    ms = aug_inference(model, image, scales, flip=True, num_classes=4)
    assert ms.shape == single.shape
    torch.testing.assert_close(ms.sum(1), torch.ones(1, 64, 96))
    # Resizing blends colours only at block borders; inside the blocks the scales agree.
    inner = torch.zeros(64, 96, dtype=torch.bool)
    for r in range(4):
        for c in range(6):
            inner[16 * r + 4 : 16 * r + 12, 16 * c + 4 : 16 * c + 12] = True
    torch.testing.assert_close(ms[..., inner], single[..., inner], rtol=1e-5, atol=1e-5)
    assert (ms.argmax(1) == single.argmax(1)).float().mean() > 0.9
    slide_ms = aug_inference(model, image, (0.5, 1.0), True, "slide", (24, 24), (16, 16))
    two = aug_inference(model, image, (0.5, 1.0), True)
    torch.testing.assert_close(slide_ms, two, rtol=1e-5, atol=1e-6)


def test_flip_is_undone_before_averaging():
    class LeftBiased(nn.Module):  # not mirror-symmetric: class 1 grows to the right
        def forward(self, x):
            ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
            return torch.cat([x[:, :1], x[:, :1] + ramp], 1)

    image = torch.rand(1, 3, 8, 12)
    model = LeftBiased()
    expected = (model(image).softmax(1) + model(image.flip(-1)).flip(-1).softmax(1)) / 2
    torch.testing.assert_close(aug_inference(model, image, flip=True), expected)


def test_inference_rejects_bad_input():
    model = PixelModel()
    with pytest.raises(ValueError, match="mode must be 'whole' or 'slide'"):
        inference(model, torch.zeros(1, 3, 8, 8), "sliding")
    with pytest.raises(ValueError, match="gives 4 classes but num_classes=19"):
        inference(model, torch.zeros(1, 3, 8, 8), num_classes=19)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        inference(model, torch.zeros(3, 8, 8))


def colour_coded(n: int = 3, k: int = 4, size=(20, 28)):
    """Images painted with the palette colour of their labels (some pixels ignored)."""
    palette = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)][:k]
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, k - 1, (n, size[0] // 4, size[1] // 4), generator=g)  # k-1 unused
    masks = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)
    images = torch.tensor(palette, dtype=torch.uint8)[masks].permute(0, 3, 1, 2)  # (n, 3, H, W)
    masks[:, 0] = 255
    return list(zip(images, masks, strict=True)), palette


def test_evaluate_scores_a_perfect_model_with_every_mode():
    pairs, palette = colour_coded()
    oracle = PaletteOracle(palette)
    for kwargs in [{}, dict(mode="slide", crop_size=(12, 12), stride=(8, 8), flip=True)]:
        m = evaluate(oracle, DataLoader(pairs, batch_size=2), 4, normalize=lambda x: x, **kwargs)
        assert m["mIoU"] == 1.0 and m["mAcc"] == 1.0 and m["aAcc"] == 1.0
        assert m["IoU"][:3] == [1.0, 1.0, 1.0] and np.isnan(m["IoU"][3])  # class 3 absent
        assert m["num_images"] == 3 and m["class_names"] == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="pass normalize="):
        evaluate(oracle, DataLoader(pairs), 4)


def test_evaluate_tiny_isanet_on_synthetic_context():
    from conftest import small_isanet

    torch.manual_seed(0)
    model = small_isanet(classes=7)
    # Eval transforms shrink the image to 48x96; the labels stay 96x192.
    data = build_dataset(
        "synthetic-context", None, "val", build_eval_transforms((96, 48)), length=2, size=(96, 192)
    )
    info = data.info
    metrics = evaluate(
        model, DataLoader(data, batch_size=2), 7, class_names=info.class_names, progress=False
    )
    assert set(metrics) >= {"mIoU", "mAcc", "aAcc", "IoU", "Acc", "class_names", "num_images"}
    assert len(metrics["IoU"]) == 7 and metrics["class_names"] == list(info.class_names)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["aAcc"] <= 1.0
    assert not model.training
    # The same numbers by hand: logits at the image size, resized to the labels, argmax.
    images, masks = next(iter(DataLoader(data, batch_size=2)))
    with torch.inference_mode():
        logits = model(model.normalize(images.float()))
    assert logits.shape[-2:] == (48, 96)
    pred = F.interpolate(logits, (96, 192), mode="bilinear").argmax(1)
    cm = ConfusionMatrix(7)
    cm.update(pred, masks)
    assert metrics["IoU"] == pytest.approx(cm.compute()["IoU"], nan_ok=True)
    assert metrics["aAcc"] == pytest.approx(cm.compute()["aAcc"])


# --- the command line ---------------------------------------------------------------------------


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    from conftest import small_isanet

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small_isanet(classes=7, class_names=SYNTHETIC_INFO.class_names).save_pretrained(
        root / "synthetic"
    )
    small_isanet(classes=150).save_pretrained(root / "ade")
    return root


def make_fake_ade(root: Path, sizes=((12, 16), (16, 12), (12, 20))) -> Path:
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(sizes):
        stem = f"ADE_val_{k:08d}"
        for folder, arr in (
            ("images", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
            ("annotations", rng.integers(0, 6, (h, w), dtype=np.uint8)),  # 0 -> ignore
        ):
            path = base / folder / "validation" / f"{stem}.{'jpg' if folder == 'images' else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return base


def test_cli_in_process_synthetic_slide_flip(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "m.json"
    cli = load_cli()
    argv = ["--checkpoint", str(tiny_checkpoints / "synthetic"), "--dataset", "synthetic-context"]
    argv += ["--synthetic-length", "3", "--synthetic-size", "96", "192", "--limit", "1"]
    argv += ["--mode", "slide", "--crop", "96", "128", "--stride", "64", "64", "--flip"]
    argv += ["--workers", "0", "--no-progress", "--json", str(out)]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert "object-red-context" in stdout and "1 image(s) in" in stdout
    record = json.loads(out.read_text())
    assert record["num_images"] == 1 and record["mode"] == "slide" and record["flip"] is True
    assert record["crop_size"] == [96, 128] and len(record["IoU"]) == 7


def test_a_zoo_model_is_evaluated_in_its_published_test_mode(tiny_checkpoints, tmp_path, capsys):
    """A cached zoo model's zoo.json says how it was tested; flags still override it."""
    import shutil

    from isa_explorer.zoo import ZooEntry

    model_dir = tmp_path / "zoo-model"
    shutil.copytree(tiny_checkpoints / "synthetic", model_dir)
    entry = ZooEntry.from_dict(
        {"name": "z", "url": "http://127.0.0.1/z.pth", "sha256": "0" * 8, "test_mode": "slide",
         "test_crop": [48, 96], "test_stride": [32, 64]}
    )  # fmt: skip
    (model_dir / "zoo.json").write_text(json.dumps(entry.to_dict()))
    cli = load_cli()
    argv = ["--checkpoint", str(model_dir), "--dataset", "synthetic-context", "--limit", "1"]
    argv += ["--synthetic-length", "1", "--synthetic-size", "96", "192", "--workers", "0"]
    argv += ["--no-progress"]
    for extra, mode, crop in (([], "slide", [48, 96]), (["--mode", "whole"], "whole", None)):
        out = tmp_path / f"{mode}.json"
        assert cli.main([*argv, *extra, "--json", str(out)]) == 0
        record = json.loads(out.read_text())
        assert record["mode"] == mode and record["crop_size"] == crop
    capsys.readouterr()


def test_the_test_scale_is_the_models_recipe(tiny_checkpoints, tmp_path):
    """A model of a published recipe (a zoo name, a cached zoo model, a train/fit.py run) is
    tested at that recipe's scale: the 769x769 Cityscapes ones at (2049, 1025)."""
    import shutil

    from isa_explorer.configs import get_config
    from isa_explorer.evaluation import evaluate_cli as cli
    from isa_explorer.zoo import ZooEntry

    def scale(checkpoint, dataset="cityscapes", *extra):
        argv = ["--checkpoint", str(checkpoint), "--dataset", dataset, *extra]
        found = cli.test_scale(cli.parse_args(argv))
        return found and sorted(found)

    # Zoo names (the 1.x config name, the 0.x one, a short alias), read without a download.
    assert scale("danet_r50-d8_4xb2-40k_cityscapes-769x769") == [1025, 2049]
    assert scale("nonlocal_r101-d8_769x769_80k_cityscapes") == [1025, 2049]
    assert scale("emanet_r50-d8_4xb2-80k_cityscapes-512x1024") == [1024, 2048]
    assert scale("danet_r50-d8_4xb2-40k_cityscapes-769x769", "ade20k") == [512, 2048]  # not its
    # A cached zoo model: its zoo.json names the recipe.
    cached = tmp_path / "zoo-model"
    shutil.copytree(tiny_checkpoints / "synthetic", cached)
    entry = {"name": "emanet_r101-d8_4xb2-80k_cityscapes-769x769", "sha256": "0" * 8,
             "url": "http://127.0.0.1/e.pth", "test_mode": "slide"}  # fmt: skip
    (cached / "zoo.json").write_text(json.dumps(ZooEntry.from_dict(entry).to_dict()))
    assert scale(cached) == [1025, 2049]
    # A train/fit.py run (or its best/ model): its config.json.
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoints / "synthetic", run / "best")
    get_config("ccnet_r50-d8_4xb2-80k_cityscapes-769x769").save(run / "config.json")
    assert scale(run) == scale(run / "best") == [1025, 2049]
    # Other models: the dataset's recipe; --scale and --no-resize win.
    assert scale(tiny_checkpoints / "synthetic") == [1024, 2048]
    assert scale(run, "cityscapes", "--scale", "100", "50") == [50, 100]
    assert scale(run, "cityscapes", "--no-resize") is None


def test_a_fit_run_is_tested_in_its_recipes_mode(tiny_checkpoints, tmp_path):
    """A train/fit.py run of a 769x769 recipe slides its 769/513 window, as its recipe's
    evaluation does in training; a run of a whole-image recipe, and any flag, as they say."""
    import argparse
    import shutil

    from isa_explorer.configs import get_config
    from isa_explorer.evaluation.cli import resolve_test_mode

    def mode(checkpoint, **flags):
        args = argparse.Namespace(checkpoint=str(checkpoint), mode=None, crop=None, stride=None)
        vars(args).update(flags)
        resolve_test_mode(args)
        return args.mode, tuple(args.crop), tuple(args.stride)

    for recipe, expected in (
        ("ccnet_r50-d8_4xb2-80k_cityscapes-769x769", "slide"),
        ("ccnet_r50-d8_4xb2-80k_cityscapes-512x1024", "whole"),
    ):
        run = tmp_path / recipe
        shutil.copytree(tiny_checkpoints / "synthetic", run / "best")
        cfg = get_config(recipe, ["evaluation.crop=[48, 96]", "evaluation.stride=[32, 64]"])
        cfg.save(run / "config.json")
        assert mode(run) == mode(run / "best") == (expected, (48, 96), (32, 64))
        assert mode(run, mode="whole", crop=(8, 8))[:2] == ("whole", (8, 8))
    assert mode(tiny_checkpoints / "synthetic") == ("whole", (769, 769), (513, 513))


def test_cli_errors_name_the_problem(tiny_checkpoints, tmp_path, capsys):
    cli = load_cli()
    args = ["--checkpoint", str(tiny_checkpoints / "synthetic"), "--workers", "0"]
    assert cli.main([*args, "--dataset", "ade20k", "--data-root", str(tmp_path / "nope")]) == 2
    assert "ADE20K not found" in capsys.readouterr().err
    make_fake_ade(tmp_path)
    assert cli.main([*args, "--dataset", "ade20k", "--data-root", str(tmp_path)]) == 2
    assert "predicts 7 classes but ade20k has 150" in capsys.readouterr().err
    ade = ["--dataset", "ade20k", "--data-root", str(tmp_path), "--batch-size", "2"]
    ade_args = ["--checkpoint", str(tiny_checkpoints / "ade"), "--workers", "0", "--no-resize"]
    assert cli.main([*ade_args, *ade]) == 2
    assert "must be evaluated with --batch-size 1" in capsys.readouterr().err
    assert cli.main([*args[:1], str(tmp_path / "missing"), "--dataset", "synthetic-context"]) == 2
    assert "missing" in capsys.readouterr().err


def run_cli(args, cwd: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    proc = subprocess.run(
        [*launcher, str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow  # subprocesses: each imports torch and timm
def test_cli_fake_ade20k_torchrun_agrees_with_one_process(tiny_checkpoints, tmp_path, capsys):
    make_fake_ade(tmp_path / "data")
    args = ["--checkpoint", str(tiny_checkpoints / "ade"), "--dataset", "ade20k"]
    args += ["--data-root", str(tmp_path / "data"), "--scale", "32", "32", "--workers", "0"]
    assert load_cli().main([*args, "--json", str(tmp_path / "single.json")]) == 0
    assert "wall" in capsys.readouterr().out  # ADE20K's first class in the table
    run_cli([*args, "--json", "dist.json", "--no-progress"], tmp_path, torchrun=2)
    one = json.loads((tmp_path / "single.json").read_text())
    two = json.loads((tmp_path / "dist.json").read_text())
    assert one["num_images"] == two["num_images"] == 3  # no image counted twice
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert one["test_scale"] == [32, 32] and len(one["IoU"]) == 150
    assert one["IoU"] == two["IoU"] and one["mIoU"] == pytest.approx(two["mIoU"])
    assert any(v is None for v in one["IoU"])  # absent classes are null in the JSON
