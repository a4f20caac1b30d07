"""Loading saved models: model dirs, fit run dirs, fp16 weights, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from isa_explorer.models.isanet import ISANet
from isa_explorer.pretrained import ModelNotFoundError, load_model, resolve_model_dir


def _tiny(**kw) -> ISANet:
    torch.manual_seed(0)
    return ISANet(
        encoder_name="resnet18",
        encoder_weights=None,
        classes=3,
        decoder_channels=32,
        decoder_isa_channels=16,
        class_names=["a", "b", "c"],
        palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        **kw,
    ).eval()


def test_load_model_round_trip_keeps_outputs_labels_and_eval_mode(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert not loaded.training
    assert loaded.class_names == ["a", "b", "c"] and loaded.palette[2] == [7, 8, 9]
    x = torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_fp16_weights_load_as_float32_with_small_error(tmp_path):
    model = _tiny()
    model.half().save_pretrained(tmp_path / "m16")
    model.float()
    loaded = load_model(tmp_path / "m16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 64, 96)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-2)


def test_a_fit_run_directory_resolves_to_its_best_model(tmp_path):
    run = tmp_path / "run"
    _tiny().save_pretrained(run / "final")
    assert resolve_model_dir(run) == run / "final"
    _tiny().save_pretrained(run / "best")
    assert resolve_model_dir(run) == run / "best"


def test_missing_and_wrong_paths_say_what_was_expected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "ckpt.pth").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="isa-explorer convert"):
        load_model(tmp_path / "ckpt.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json and model.safetensors"):
        load_model(tmp_path / "empty")


def test_a_non_isanet_model_directory_is_refused(tmp_path):
    model_dir = tmp_path / "m"
    _tiny().save_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["_model_class"] = "Unet"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ISANet models only"):
        load_model(model_dir)
