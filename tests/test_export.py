"""Export to ONNX and torch.export with any input size: exact against eager PyTorch at sizes
other than the export's, input checks in the loaders, clear errors for unsupported options."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import small_isanet

from isa_explorer.export import (
    ExportedInputError,
    ExportError,
    export_model,
    load_exported,
)
from isa_explorer.export.cli import main as export_main
from isa_explorer.heads.grid import GroupGrid
from isa_explorer.heads.grid_export import SymbolicGroupGrid
from isa_explorer.heads.isa import isa_context
from isa_explorer.models.fusion import fuse_for_inference
from isa_explorer.pretrained import load_default_model

pytest.importorskip("onnxruntime")

# None is the export example's size (200x264): multiples of 8 and not, one block per side
# (32x32: ISA's grid has a single 8x8 block), and a batch of 3.
SIZES = [(256, 512), (257, 385), (97, 131), (32, 32), (40, 56), (512, 1024)]


@pytest.fixture(scope="module")
def default_model():
    return load_default_model()


@pytest.fixture(scope="module")
def exported(default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    onnx = export_model(default_model, out / "model", "onnx")
    pt2 = export_model(default_model, out / "model", "torch-export")
    return {"onnx": load_exported(onnx, threads=2), "torch-export": load_exported(pt2)}


def _eager(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(model.normalize(images))


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_exported_models_equal_eager_at_sizes_other_than_the_exports(default_model, exported, fmt):
    gen = torch.Generator().manual_seed(0)
    for i, (h, w) in enumerate(SIZES):
        images = torch.randint(0, 256, (3 if i == 1 else 1, 3, h, w), generator=gen).float()
        expected = _eager(default_model, images)
        got = torch.from_numpy(exported[fmt](images))
        assert got.shape == expected.shape
        spread = float(expected.max() - expected.min())
        diff = float((got - expected).abs().max())
        assert diff <= 1e-4 * spread, f"{fmt} {h}x{w}: max |diff| {diff:.3g} of range {spread:.3g}"
        agree = float((got.argmax(1) == expected.argmax(1)).float().mean())
        assert agree >= 0.9999, f"{fmt} {h}x{w}: argmax agreement {agree:.5f}"


@pytest.mark.parametrize("size", [(5, 7), (8, 8), (9, 17), (33, 49), (16, 3)])
def test_the_symbolic_grid_formulation_equals_the_eager_one(size):
    """The export's gathers and copies compute what padding, slicing and reshape do."""
    torch.manual_seed(0)
    from isa_explorer.models.layers import RelationBlock

    blocks = (("long", RelationBlock(8, 4).eval()), ("short", RelationBlock(8, 4).eval()))
    residual = torch.randn(2, 8, *size)
    fast, symbolic = GroupGrid.of(*size, (4, 4)), SymbolicGroupGrid.of(*size, (4, 4))
    assert symbolic.symbolic and not fast.symbolic
    padded = fast.pad(residual)
    torch.testing.assert_close(symbolic.pad(residual), padded, atol=0, rtol=0)
    torch.testing.assert_close(symbolic.crop(padded), fast.crop(padded), atol=0, rtol=0)
    for step in ("long", "short"):
        tokens = fast.to_tokens(padded, step)
        torch.testing.assert_close(symbolic.to_tokens(padded, step), tokens, atol=0, rtol=0)
        torch.testing.assert_close(symbolic.swap(tokens, step), fast.swap(tokens, step))
        torch.testing.assert_close(symbolic.to_map(tokens, step), fast.to_map(tokens, step))
    with torch.no_grad():
        a, _ = isa_context(blocks, residual, fast, "fused")
        b, _ = isa_context(blocks, residual, symbolic, "fused")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_argmax_and_static_exports(default_model, tmp_path):
    path = export_model(default_model, tmp_path / "fixed.onnx", static=(64, 96), argmax=True)
    seg = load_exported(path, threads=2)
    images = torch.randint(0, 256, (2, 3, 64, 96), generator=torch.Generator().manual_seed(1))
    labels = seg(images.float())
    assert labels.shape == (2, 64, 96) and labels.dtype == np.int64
    expected = _eager(default_model, images.float()).argmax(1).numpy()
    assert (labels == expected).mean() >= 0.9999
    with pytest.raises(ExportedInputError, match="exported for 64x96 images.*got 65x96"):
        seg(np.zeros((1, 3, 65, 96), np.float32))


def test_fp16_export_stays_close(default_model, tmp_path):
    seg = load_exported(export_model(default_model, tmp_path / "half", "torch-export", fp16=True))
    images = torch.randint(0, 256, (1, 3, 97, 131), generator=torch.Generator().manual_seed(2))
    expected = _eager(default_model, images.float())
    got = torch.from_numpy(seg(images.numpy().astype(np.uint8)))  # any numeric dtype is taken
    assert got.dtype == torch.float32
    # float16 keeps ~3 significant digits: a few 1e-3 of the logits' range.
    assert float((got - expected).abs().max()) <= 1e-2 * float(expected.max() - expected.min())
    assert float((got.argmax(1) == expected.argmax(1)).float().mean()) >= 0.99


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_loaders_refuse_bad_inputs_with_the_fix(exported, fmt):
    seg = exported[fmt]
    with pytest.raises(ExportedInputError, match="expected 3 channels.*got 4"):
        seg(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(ExportedInputError, match="is 31x64.*>= 32 pixels"):
        seg(np.zeros((1, 3, 31, 64), np.float32))
    with pytest.raises(ExportedInputError, match=r"expected images \(N, 3, H, W\)"):
        seg(np.zeros((64, 64), np.float32))
    one = seg(np.zeros((40, 48, 3), np.uint8))  # one (H, W, 3) image is taken as a batch of 1
    assert one.shape == (1, 7, 40, 48)


def test_a_model_fused_for_inference_exports_at_any_size(default_model, tmp_path):
    """The streamed path and banded convolutions are eager-only: the export traces the whole
    map, and the fused graph gives the plain model's logits (BatchNorm folded: fp32 rounding)."""
    fused = fuse_for_inference(copy.deepcopy(default_model))
    seg = load_exported(export_model(fused, tmp_path / "fused", "torch-export"))
    images = torch.randint(0, 256, (1, 3, 97, 131), generator=torch.Generator().manual_seed(3))
    expected = _eager(default_model, images.float())
    got = torch.from_numpy(seg(images.numpy().astype(np.uint8)))
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.max() - expected.min())


def test_unsupported_models_and_options_are_clear_errors(default_model, tmp_path, capsys):
    with pytest.raises(ExportError, match="at least 32 pixels"):
        export_model(default_model, tmp_path / "x.onnx", static=(16, 64))
    with pytest.raises(ExportError, match="takes RGB images.*4 input channels"):
        export_model(
            small_isanet(in_channels=4, mean=(0, 0, 0, 0), std=(1, 1, 1, 1)), tmp_path / "x"
        )
    with pytest.raises(ExportError, match="unknown format 'tflite'"):
        export_model(default_model, tmp_path / "x", "tflite")
    assert export_main(["no-such-model", str(tmp_path / "x.onnx")]) == 1
    assert "neither an existing path nor a zoo model name" in capsys.readouterr().err
    assert export_main(["default", str(tmp_path / "x.onnx"), "--static", "16x64"]) == 1
    assert "at least 32 pixels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_main(["default", str(tmp_path / "x.onnx"), "--static", "big"])
    assert "write HxW, e.g. 128x256" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))  # nothing written


def test_cli_writes_a_model_that_loads(tmp_path, capsys):
    assert export_main(["default", str(tmp_path / "cli"), "--format", "torch-export"]) == 0
    assert "any size from 32 px" in capsys.readouterr().out
    settings = json.loads((tmp_path / "cli.pt2.json").read_text())
    assert settings["static"] is None and len(settings["class_names"]) == 7
    assert load_exported(tmp_path / "cli.pt2")(np.zeros((1, 3, 48, 48))).shape == (1, 7, 48, 48)


def test_a_pt2_that_pickles_its_weights_is_refused(default_model, tmp_path):
    good = export_model(default_model, tmp_path / "good", "torch-export")
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ExportedInputError, match="weight_0.*does not load"):
        load_exported(bad)
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ExportedInputError, match="not a .pt2 archive"):
        load_exported(tmp_path / "junk.pt2")


def test_load_exported_names_the_accepted_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported model"):
        load_exported(tmp_path / "missing.onnx")
    (tmp_path / "m.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .onnx or .pt2 file"):
        load_exported(Path(tmp_path / "m.bin"))


class _Touch:
    """A pickle that creates a file when unpickled (what a hostile archive would run)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("member", ["data/sample_inputs/model.pt", "data/custom_objs/obj_0"])
def test_a_pt2_with_code_in_any_member_is_refused_before_loading(default_model, tmp_path, member):
    import pickle

    good = export_model(default_model, tmp_path / "good", "torch-export")
    bad, marker = tmp_path / "bad.pt2", tmp_path / "ran"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for item in src.infolist():
            if not item.filename.endswith(member):
                dst.writestr(item, src.read(item))
        dst.writestr(f"{root}/{member}", pickle.dumps(_Touch(marker)))
    with pytest.raises(ExportedInputError, match="does not load"):
        load_exported(bad)
    assert not marker.exists()
