"""Reading any image file, predicting a label map, colouring it, and the train/predict.py CLI."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png_header
from PIL import Image
from torch import nn

from isa_explorer.data import CorruptFileError
from isa_explorer.evaluation.predict import predict_image
from isa_explorer.images import read_image
from isa_explorer.palette import colourise, default_palette, overlay, palette_of

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "train" / "predict.py"
PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


def halves(h: int = 16, w: int = 24) -> np.ndarray:
    """Red left half, blue right half, ``(h, w, 3)`` uint8."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return arr


def test_read_image_applies_exif_rotation(tmp_path):
    im = Image.fromarray(halves())
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "photo.jpg", quality=100, exif=exif)
    image = read_image(tmp_path / "photo.jpg")
    assert image.shape == (3, 24, 16) and image.dtype == torch.uint8  # upright: portrait
    top, bottom = image[:, :10].float().mean((1, 2)), image[:, 14:].float().mean((1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50  # left -> top


def test_read_image_converts_grey_palette_alpha_and_16_bit(tmp_path):
    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").unique().tolist() == [77]

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    pal.putpalette([10, 20, 30, 200, 100, 50])
    pal.save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png")[:, 0, 1].tolist() == [200, 100, 50]

    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., :3] = (40, 80, 120)
    rgba[0, 0, 3] = 255  # one opaque pixel, the rest transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (3, 3, 3) and out[:, 0, 0].tolist() == [40, 80, 120]
    assert out[:, 2, 2].tolist() == [255, 255, 255]  # transparent -> white background

    deep = np.array([[0, 257 * 100], [65535, 257 * 200]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "deep.png")
    assert out.dtype == torch.uint8 and out[0].tolist() == [[0, 100], [255, 200]]
    assert torch.equal(out[0], out[2])


def test_read_image_names_corrupt_and_missing_files(tmp_path):
    (tmp_path / "noise.png").write_bytes(os.urandom(200))
    with pytest.raises(CorruptFileError, match=r"noise\.png. is not an image in a readable"):
        read_image(tmp_path / "noise.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError, match="no image file"):
        read_image(tmp_path / "absent.jpg")


class PaletteOracle(nn.Module):
    """Classifies a pixel by its nearest palette colour."""

    classes = len(PALETTE)

    def __init__(self):
        super().__init__()
        self.register_buffer("colours", torch.tensor(PALETTE, dtype=torch.float32))

    def normalize(self, image):
        return image

    def forward(self, x):  # (B, 3, H, W) -> (B, K, H, W)
        return -((x[:, None] - self.colours[None, :, :, None, None]) ** 2).sum(2)


def test_predict_image_recovers_labels_at_the_image_size():
    labels = torch.randint(0, 3, (5, 7)).repeat_interleave(4, 0).repeat_interleave(4, 1)
    image = torch.tensor(PALETTE, dtype=torch.uint8)[labels].permute(2, 0, 1)  # (3, 20, 28)
    oracle = PaletteOracle()
    assert torch.equal(predict_image(oracle, image), labels)
    tta = predict_image(oracle, image, mode="slide", crop_size=(12, 12), stride=(8, 8), flip=True)
    assert torch.equal(tta, labels)
    small = predict_image(oracle, image, scale=(14, 10))  # inference at 10x14, labels at 20x28
    assert small.shape == (20, 28) and (small == labels).float().mean() > 0.8
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        predict_image(oracle, image.permute(1, 2, 0))
    with pytest.raises(ValueError, match="uint8"):
        predict_image(oracle, image.float())


def test_predict_image_with_a_tiny_isanet_matches_its_logits():
    from conftest import small_isanet

    torch.manual_seed(0)
    model = small_isanet()
    image = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    labels = predict_image(model, image)
    with torch.inference_mode():
        expected = model(model.normalize(image[None].float()))[0].argmax(0)
    assert labels.dtype == torch.int64 and torch.equal(labels, expected)


def test_colourise_and_overlay():
    labels = torch.tensor([[0, 1], [2, 255]])
    colour = colourise(labels, PALETTE)
    assert colour.dtype == torch.uint8 and colour.shape == (3, 2, 2)
    assert colour[:, 0, 1].tolist() == list(PALETTE[1]) and colour[:, 1, 1].tolist() == [0, 0, 0]
    image = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    assert torch.equal(overlay(image, colour, 0.0), image)
    assert torch.equal(overlay(image, colour, 1.0), colour)
    assert overlay(image, colour, 0.5)[:, 0, 0].tolist() == [150, 65, 65]
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, colour, 1.5)
    assert len(set(default_palette(40))) == 40


def test_palette_of_prefers_the_saved_palette():
    from conftest import small_isanet

    assert palette_of(small_isanet(classes=3, palette=PALETTE)) == PALETTE
    assert palette_of(small_isanet(classes=3)) == default_palette(3)


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from conftest import small_isanet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    small_isanet(classes=3, palette=PALETTE, class_names=["a", "b", "c"]).save_pretrained(path)
    return path


def load_cli():
    spec = importlib.util.spec_from_file_location("predict_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # subprocesses: each imports torch and timm
def test_predict_cli_on_a_folder_skips_the_corrupt_file(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(halves(32, 40)).save(images / "a.png")
    Image.fromarray(np.full((36, 44), 90, np.uint8)).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(CLI), str(images), "--out", str(out)]
        + ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken.png" in proc.stderr and "2 image(s) segmented" in proc.stdout
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"{s}_{k}.png" for s in "ab" for k in ("colour", "labels", "overlay")]
    labels = np.array(Image.open(out / "a_labels.png"))
    colour = np.array(Image.open(out / "a_colour.png"))
    assert labels.shape == (32, 40) and colour.shape == (32, 40, 3) and labels.max() < 3
    assert (colour == np.array(PALETTE, np.uint8)[labels]).all()
    assert np.array(Image.open(out / "b_overlay.png")).shape == (36, 44, 3)


def test_predict_cli_glob_and_errors(tiny_checkpoint, tmp_path, capsys):
    cli = load_cli()
    Image.fromarray(halves(32, 48)).save(tmp_path / "x.png")
    Image.fromarray(halves(32, 48)).save(tmp_path / "x.jpg")
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert cli.main([str(tmp_path / "x.*"), "--out", str(tmp_path / "o"), *args]) == 0
    assert (tmp_path / "o" / "x_png_labels.png").is_file()  # same stem: extension added
    assert (tmp_path / "o" / "x_jpg_overlay.png").is_file()
    assert cli.main([str(tmp_path / "none*.png"), "--out", str(tmp_path / "o"), *args]) == 2
    assert "matches no files" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"garbage")
    assert cli.main([str(tmp_path / "bad.png"), "--out", str(tmp_path / "o"), *args]) == 1
    assert "bad.png" in capsys.readouterr().err


def test_predict_cli_refuses_what_the_app_refuses_in_the_same_words(
    tiny_checkpoint, tmp_path, capsys
):
    """One reader, one set of limits and messages: predict and the app say the same."""
    from isa_explorer.explorer.uploads import ImageInputError, load_image_file

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "dot.png")
    Image.fromarray(np.zeros((300, 2, 3), np.uint8)).save(folder / "thin.png")
    (folder / "huge.png").write_bytes(png_header(60_000, 60_000))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_bytes(b"<html>not found</html>")
    frames = [Image.fromarray(np.full((40, 48, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(halves(40, 48)).save(folder / "ok.png")
    args = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert load_cli().main([str(folder), "--out", str(tmp_path / "out"), *args]) == 0
    out, err = capsys.readouterr()
    assert "2 image(s) segmented" in out and "5 skipped" in out
    assert (tmp_path / "out" / "anim_labels.png").is_file()
    assert "anim.gif: animated image: the first of its 2 frames is used" in err
    for name in ("dot.png", "thin.png", "huge.png", "empty.png", "text.jpg"):
        with pytest.raises(ImageInputError) as refused:  # what the app says of the same file
            load_image_file(folder / name)
        assert f"skipped {folder / name}: {refused.value}" in err
    assert "'thin.png' is 2x300 pixels; both sides must be at least 32 pixels" in err
    assert "'empty.png' is empty (0 bytes)" in err
    huge = next(line for line in err.splitlines() if "huge.png:" in line)
    assert "more than the 80 MP limit" in huge and "corrupt" not in huge
    for word in ("upload", "PIL", "this app"):
        assert word not in err
    assert "synthetic" not in err  # this model has classes of its own


def test_predict_cli_says_the_synthetic_model_knows_synthetic_classes_only(tmp_path, capsys):
    from conftest import small_isanet

    from isa_explorer.data.info import SYNTHETIC_INFO

    torch.manual_seed(0)
    names = SYNTHETIC_INFO.class_names
    small_isanet(classes=len(names), class_names=names).save_pretrained(tmp_path / "synthetic")
    Image.fromarray(halves(40, 48)).save(tmp_path / "photo.png")
    args = ["--checkpoint", str(tmp_path / "synthetic"), "--device", "cpu"]
    assert load_cli().main([str(tmp_path / "photo.png"), "--out", str(tmp_path / "o"), *args]) == 0
    err = capsys.readouterr().err
    assert "knows the synthetic scenes' classes only" in err and "cityscapes-r50" in err
