"""ISANet on smp encoders: registration, any input size, save/load round trip, aux head."""

import segmentation_models_pytorch as smp
import torch
from conftest import small_isanet

import isa_explorer.models  # noqa: F401  (registers "isanet" with smp)
from isa_explorer import ISANet


def test_create_model_builds_isanet_and_matches_direct_construction():
    torch.manual_seed(0)
    a = smp.create_model(
        "isanet",
        encoder_name="resnet18",
        encoder_weights=None,
        classes=5,
        decoder_channels=32,
        decoder_isa_channels=16,
    )
    torch.manual_seed(0)
    b = small_isanet()
    assert isinstance(a, ISANet)
    x = torch.randn(1, 3, 64, 96)
    torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_any_input_size_runs_at_its_own_size():
    m = small_isanet().eval()
    for h, w in ((75, 90), (64, 64), (33, 121)):
        x = torch.randn(2, 3, h, w)
        assert m(x).shape == (2, 5, h, w)
        out = m.predict(x)
        assert out.shape == (2, 5, h, w) and torch.isfinite(out).all()
    # predict is forward (no padding; see tests/test_any_size.py)
    x = torch.randn(1, 3, 75, 90)
    with torch.no_grad():
        torch.testing.assert_close(m.predict(x), m(x), atol=0, rtol=0)


def test_predict_runs_in_eval_mode_and_leaves_the_mode_as_it_was():
    torch.manual_seed(0)
    m = small_isanet()
    m.encoder.eval()  # parts in different modes stay so
    modes = {name: module.training for name, module in m.named_modules()}
    x = torch.randn(1, 3, 64, 96)
    out = m.predict(x)
    assert {name: module.training for name, module in m.named_modules()} == modes
    torch.testing.assert_close(out, m.eval().predict(x), atol=0, rtol=0)  # eval-mode logits
    assert not m.training  # and an eval-mode model stays in eval mode


def test_from_pretrained_round_trip_is_identical(tmp_path):
    torch.manual_seed(0)
    m = small_isanet(
        aux_head=True, class_names=list("abcde"), palette=[[i, i, i] for i in range(5)]
    )
    m.train()
    m(torch.randn(2, 3, 64, 64))  # move BatchNorm statistics away from their init
    m.eval()
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (smp.from_pretrained(str(tmp_path)), ISANet.from_pretrained(str(tmp_path))):
        assert isinstance(loaded, ISANet)
        assert loaded.class_names == list("abcde") and loaded.palette[3] == [3, 3, 3]
        x = torch.randn(1, 3, 75, 90)
        torch.testing.assert_close(loaded.eval().predict(x), m.predict(x), atol=0, rtol=0)
        assert loaded.aux_head is not None


def test_forward_train_returns_aux_logits_at_input_size():
    m = small_isanet(aux_head=True).train()
    out = m.forward_train(torch.randn(2, 3, 64, 80))
    assert out["out"].shape == out["aux"].shape == (2, 5, 64, 80)
    assert "aux" not in small_isanet().forward_train(torch.randn(2, 3, 64, 80))


def test_heads_for_comparison_and_bad_arguments():
    x = torch.randn(1, 3, 64, 64)
    for head in ("isa", "dense", "fcn"):
        assert small_isanet(head=head).eval()(x).shape == (1, 5, 64, 64)
    for bad, match in (
        (dict(head="transformer"), "unknown head 'transformer': choose from isa, dense, fcn"),
        (dict(class_names=["a"]), "class names"),
        (dict(decoder_order="sideways"), "order"),
    ):
        try:
            small_isanet(**bad)
        except ValueError as e:
            assert match in str(e)
        else:
            raise AssertionError(f"{bad} accepted")


def test_published_r50_d8_layout():
    m = ISANet(encoder_name="tu-resnet50c", encoder_weights=None, classes=19, aux_head=True)
    assert m.encoder.out_channels[-2:] == [1024, 2048] and m.output_stride == 8
    assert m.decoder.in_conv.conv.weight.shape == (512, 2048, 3, 3)
    assert m.decoder.global_relation.key_project[0].conv.weight.shape == (256, 512, 1, 1)
    assert m.aux_head.convs[0].conv.weight.shape == (256, 1024, 3, 3)
