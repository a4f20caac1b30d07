"""mmseg ISANet checkpoints -> ISA Explorer: parity on the mmseg fixture, key coverage, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmseg_checkpoints import state_from_listing
from parity import compare_to_reference

from isa_explorer import ISANet, heads
from isa_explorer.convert import (
    ConversionError,
    ISANetSpec,
    convert_checkpoint,
    infer_spec,
    main,
    rename_key,
)
from isa_explorer.data.info import CITYSCAPES_INFO
from isa_explorer.heads.grid import GroupGrid

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "isanet_r50_small.pt"
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def small() -> dict:
    """mmseg's 1/8-width ISANet R-50-D8 (7 classes): weights, an image and its logits."""
    return torch.load(SMALL, weights_only=True)


def feature_logits(model: ISANet, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and aux logits at 1/8 resolution for a 0-255 RGB image."""
    with torch.no_grad():
        features = model.encoder(model.normalize(image))
        return model.decoder(features[-1]), model.aux_head(features[-2])


def decode_logits(model: ISANet, image: torch.Tensor) -> torch.Tensor:
    return feature_logits(model, image)[0]


def aux_logits(model: ISANet, image: torch.Tensor) -> torch.Tensor:
    return feature_logits(model, image)[1]


def full_logits(model: ISANet, image: torch.Tensor) -> torch.Tensor:
    return model(model.normalize(image))


def assert_mmseg_parity(model: ISANet, small: dict) -> None:
    """Decode and aux logits equal mmseg's up to float32 rounding (see tests/parity.py).

    The fixture holds mmseg's float32 logits only; our model in float64 on the same weights is
    the exact function, and the tolerance is a few times what float32 rounding costs our own
    model on this build, scaled to the logits' magnitude (max |logit| ~136 here, fp32 error
    ~2e-4). A fixed atol would hold on one oneDNN build and fail on the next.
    """
    image = small["image_rgb_0_255"]  # (1, 3, 75, 90)
    for fn, key in ((decode_logits, "decode_logits"), (aux_logits, "aux_logits")):
        parity = compare_to_reference(fn, model, (image,), small[key])
        assert parity.ok, f"{key}: {parity}"
        # The check stays meaningful: tighter than 1e-4 of the logits' range.
        assert parity.tolerance < 1e-4 * parity.scale, f"{key}: {parity}"


def released_r50_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under every key and shape of the released ISANet R-50-D8 (19 classes)."""
    return state_from_listing(FIXTURES / "isanet_r50_keys.txt", seed)


def test_fixture_parity_with_mmseg(small):
    model, report = convert_checkpoint(SMALL)
    assert report.spec == ISANetSpec(
        depth=50,
        stem_width=8,
        channels=(8, 16, 32, 64),
        classes=7,
        head="isa",
        head_kwargs={"decoder_channels": 64, "decoder_isa_channels": 32},
        aux_channels=32,
    )
    assert str(report).startswith(
        "ISANet R-50-D8: 7 classes (generic names), head 64 ch, isa 32 ch"
    )
    assert report.mapped == len(small["state_dict"]) == len(model.state_dict())
    assert report.unmapped == [] and report.unexpected == [] and report.dataset is None
    image = small["image_rgb_0_255"]  # (1, 3, 75, 90)
    decode, aux = feature_logits(model, image)
    assert decode.shape == aux.shape == (1, 7, 10, 12)
    assert_mmseg_parity(model.eval(), small)
    # forward() is the same logits upsampled to the image.
    expected = F.interpolate(small["decode_logits"], size=(75, 90), mode="bilinear")
    parity = compare_to_reference(full_logits, model, (image,), expected)
    assert parity.ok, str(parity)


def test_fcn_checkpoints_convert(small):
    """mmseg's fcn_r50-d8 layout: the fixture's backbone and aux head under an FCNHead decode
    head (decode_head.convs.0/1 + conv_cat), made from our FCN model by renaming its keys back."""
    isa, _ = convert_checkpoint(small["state_dict"])
    torch.manual_seed(0)
    ours = ISANet(**{**infer_spec(small["state_dict"]).model_kwargs(), "head": "fcn"}).eval()
    trunk = {k: v for k, v in isa.state_dict().items() if not k.startswith("decoder.")}
    ours.load_state_dict(trunk, strict=False)
    for key, t in ours.decoder.state_dict().items():
        if "running" in key:  # BatchNorm statistics other than the identity's, so they count
            t.uniform_(0.5, 1.5)
    to_mmseg = {rename_key(k): k for k in small["state_dict"]}
    state = {
        to_mmseg.get(k, k.replace("decoder.", "decode_head.", 1)): v
        for k, v in ours.state_dict().items()
    }
    assert {"decode_head.convs.1.conv.weight", "decode_head.conv_cat.conv.weight"} <= set(state)
    model, report = convert_checkpoint(state, strict=True)
    assert report.spec.head == "fcn" and model.head == "fcn"
    assert report.spec.head_kwargs == {"decoder_channels": 64}
    assert str(report).startswith(
        "ISANet R-50-D8 (fcn head): 7 classes (generic names), head 64 ch"
    )
    image = small["image_rgb_0_255"]  # (1, 3, 75, 90)
    with torch.no_grad():
        assert torch.equal(full_logits(model, image), full_logits(ours, image))
    # mmseg's non-local head is an FCNHead with an nl_block: taken for NL, not for the FCN;
    # the disentangled one (a dnl_block) converts to no head here, and is named.
    nl = {**state, "decode_head.nl_block.g.conv.weight": torch.zeros(32, 64, 1, 1)}
    assert infer_spec(nl).head == "nl"
    dnl = {**state, "decode_head.dnl_block.g.conv.weight": torch.zeros(32, 64, 1, 1)}
    with pytest.raises(ConversionError, match=r"looks like DNLHead"):
        infer_spec(dnl)


def _swap_query_key(model: ISANet) -> None:
    """A wrong weight mapping: the long-range block's query and key projections swapped."""
    rel = model.decoder.global_relation
    q, k = rel.query_project.state_dict(), rel.key_project.state_dict()
    rel.query_project.load_state_dict(k)
    rel.key_project.load_state_dict(q)


def _drop_bn(model: ISANet) -> None:
    """A missing BatchNorm: out_conv's BN left at its initial state (the identity, up to eps)."""
    model.decoder.out_conv.bn.reset_running_stats()
    model.decoder.out_conv.bn.reset_parameters()


@pytest.mark.parametrize("mutation", ["weight mapping", "missing BN", "padding side"])
def test_fixture_parity_fails_on_a_real_defect(small, mutation, monkeypatch):
    # Each defect a converter or a port could have moves the logits far outside the tolerance.
    model, _ = convert_checkpoint(SMALL)
    model.eval()
    if mutation == "weight mapping":
        _swap_query_key(model)
    elif mutation == "missing BN":
        _drop_bn(model)
    else:  # pad bottom/right only, as a naive port would
        original = GroupGrid.of.__func__

        def bottom_right(cls, h, w, down_factor):
            return dataclasses.replace(original(cls, h, w, down_factor), pad_top=0, pad_left=0)

        monkeypatch.setattr(GroupGrid, "of", classmethod(bottom_right))
    parity = compare_to_reference(
        decode_logits, model, (small["image_rgb_0_255"],), small["decode_logits"]
    )
    assert not parity.ok
    assert parity.max_abs_diff > 100 * parity.tolerance, str(parity)


def test_every_released_r50_key_is_mapped():
    torch.manual_seed(0)
    state = released_r50_state()
    model, report = convert_checkpoint(state)
    assert report.unmapped == [] and report.unexpected == []
    assert report.mapped == len(state) == len(model.state_dict())
    assert report.dataset == "cityscapes"
    assert model.class_names == list(CITYSCAPES_INFO.class_names)
    assert model.palette == [list(c) for c in CITYSCAPES_INFO.palette]
    # The published architecture, built by hand, takes the converted weights strictly.
    reference = ISANet(encoder_name="tu-resnet50c", classes=19, aux_head=True, encoder_weights=None)
    reference.load_state_dict(model.state_dict(), strict=True)
    for src, dst in [
        ("backbone.stem.0.weight", "encoder.model.conv1.0.weight"),
        ("backbone.stem.7.running_mean", "encoder.model.bn1.running_mean"),
        ("backbone.layer4.2.conv3.weight", "encoder.model.layer4.2.conv3.weight"),
        (
            "decode_head.local_relation.value_project.bias",
            "decoder.local_relation.value_project.bias",
        ),
        ("auxiliary_head.convs.0.conv.weight", "aux_head.convs.0.conv.weight"),
    ]:
        assert torch.equal(reference.state_dict()[dst], state[src]), dst


def test_r101_depth_inferred_from_layer3():
    # Shapes only (meta tensors): R-101 has 23 blocks in layer3, with the shapes of block 5.
    state = {k: torch.empty(v.shape, device="meta") for k, v in released_r50_state().items()}
    for i in range(6, 23):
        for k in [k for k in state if k.startswith("backbone.layer3.5.")]:
            state[k.replace("layer3.5.", f"layer3.{i}.")] = state[k]
    spec = infer_spec(state)
    assert spec.depth == 101 and spec.model_kwargs()["encoder_name"] == "tu-resnet101c"
    assert "stem_width" not in spec.model_kwargs() and "channels" not in spec.model_kwargs()


def test_left_out_keys_are_reported_and_strict_fails(small):
    state = dict(small["state_dict"])
    state["data_preprocessor.mean"] = torch.zeros(3)
    state["decode_head.extra.weight"] = torch.zeros(1)
    _, report = convert_checkpoint(state)
    assert report.unmapped == ["data_preprocessor.mean"]
    assert report.unexpected == ["decode_head.extra.weight"]
    assert "unmapped: data_preprocessor.mean" in str(report)
    with pytest.raises(ConversionError, match="left out"):
        convert_checkpoint(state, strict=True)


def test_bad_checkpoints_give_clear_errors(small, tmp_path):
    state = dict(small["state_dict"])
    del state["decode_head.out_conv.bn.running_var"]
    with pytest.raises(ConversionError, match="lacks 1 tensors.*decoder.out_conv.bn.running_var"):
        convert_checkpoint(state)
    v1b = {
        k.replace("backbone.stem.0", "backbone.conv1"): v for k, v in small["state_dict"].items()
    }
    with pytest.raises(ConversionError, match="not mmseg's ResNetV1c"):
        convert_checkpoint(v1b)
    with pytest.raises(ConversionError, match="--dataset voc has 21 classes.*has 7"):
        convert_checkpoint(SMALL, dataset="voc")
    with pytest.raises(ConversionError, match="not found"):
        convert_checkpoint(tmp_path / "missing.pth")
    # Python objects in meta: refused by safe loading, with the way out named.
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"meta": {"args": argparse.Namespace(lr=0.01)}, "state_dict": state}, unsafe)
    with pytest.raises(ConversionError, match=r"argparse\.Namespace.*weights_only=True"):
        convert_checkpoint(unsafe)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "isa_explorer", "convert", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_round_trip(small, tmp_path):
    names = [f"class {i}" for i in range(7)]
    palette = [[i * 30, 255 - i * 30, i] for i in range(7)]
    ckpt = tmp_path / "isanet_small.pth"
    meta = {"CLASSES": names, "PALETTE": palette, "config": "model = dict(...)"}
    torch.save({"meta": meta, "state_dict": small["state_dict"]}, ckpt)
    out = tmp_path / "converted"
    result = run_cli(str(ckpt), str(out))
    assert result.returncode == 0, result.stderr
    assert "7 classes (names from the checkpoint)" in result.stdout
    assert "mapped 416 tensors; unmapped 0; unexpected 0" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    model = ISANet.from_pretrained(out).eval()
    assert model.class_names == names and model.palette == palette
    assert_mmseg_parity(model.eval(), small)


@pytest.mark.slow
def test_cli_rejects_other_models(small, tmp_path):
    # A PSPNet: same backbone, a pyramid-pooling decode head.
    state = {k: v for k, v in small["state_dict"].items() if not k.startswith("decode_head.")}
    state["decode_head.psp_modules.0.1.conv.weight"] = torch.zeros(16, 256, 1, 1)
    state["decode_head.bottleneck.conv.weight"] = torch.zeros(64, 320, 3, 3)
    state["decode_head.conv_seg.weight"] = torch.zeros(7, 64, 1, 1)
    ckpt = tmp_path / "pspnet.pth"
    torch.save({"state_dict": state}, ckpt)
    result = run_cli(str(ckpt), str(tmp_path / "out"))
    assert result.returncode != 0
    assert "no head here converts this checkpoint (decode head looks like PSPHead" in result.stderr
    for name in heads.names():
        if heads.get(name).mmseg is not None:
            assert f"{heads.get(name).mmseg.head_type} ('{name}' head)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_main_reports_errors_without_traceback(small, tmp_path, capsys):
    assert main([str(SMALL), str(tmp_path / "out"), "--dataset", "cityscapes"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset cityscapes has 19 classes")


def test_769x769_checkpoints_upsample_with_align_corners(small, tmp_path):
    path = tmp_path / "isanet_r50-d8_769x769_40k_cityscapes.pth"
    torch.save({"state_dict": small["state_dict"]}, path)
    model, _ = convert_checkpoint(path)
    assert model.align_corners is True
    assert convert_checkpoint(small["state_dict"])[0].align_corners is False
    image = small["image_rgb_0_255"]
    decode, _ = feature_logits(model, image)
    expected = torch.nn.functional.interpolate(
        decode, size=image.shape[-2:], mode="bilinear", align_corners=True
    )
    with torch.inference_mode():
        torch.testing.assert_close(model(model.normalize(image)), expected)
