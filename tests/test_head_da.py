"""DANet's head (``da``): parity with mmsegmentation 1.2.2's ``DAHead``, maps, training."""

import ast
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity import compare_to_reference

from isa_explorer.heads import da
from isa_explorer.heads.da import DAHead
from isa_explorer.heads.protocol import HeadConfig

FIXTURES = Path(__file__).parent / "fixtures"
SIZES = ("1x64x20x27", "2x64x16x16")
OUTPUTS = {"out": "output", "pam": "output_pam", "cam": "output_cam"}


@functools.cache
def _fixture(size: str) -> dict:
    return torch.load(FIXTURES / f"dahead_small_{size}.pt", weights_only=True)


def _mmseg_head(d: dict, impl: str = "fused") -> DAHead:
    c = d["config"]
    assert c["type"] == "DAHead" and c["dropout_ratio"] == 0.1
    head = DAHead(
        c["in_channels"], c["num_classes"], c["channels"], c["pam_channels"], attn_impl=impl
    )
    head.load_state_dict(d["state_dict"], strict=True)
    return head.eval()


def _output(head: DAHead, x: torch.Tensor, key: str, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return head.forward_train(x)[key].detach()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_matches_mmsegmentation_dahead_fp32(size, impl):
    d = _fixture(size)
    head = _mmseg_head(d, impl)
    for key, ref in OUTPUTS.items():
        for grad in (False, True) if key == "out" else (False,):
            run = functools.partial(_output, key=key, grad=grad)
            parity = compare_to_reference(run, head, (d["input"],), d[ref])
            assert parity.ok, f"{key} {grad=}: {parity}"
            assert parity.tolerance < 1e-4 * parity.scale, f"{key}: {parity}"
    with torch.no_grad():  # what the head predicts with is pam_cam
        torch.testing.assert_close(head(d["input"]), head.forward_train(d["input"])["out"])


@pytest.mark.parametrize("size", SIZES)
def test_matches_mmsegmentation_dahead_fp64(size):
    # All three within 1e-9, CAM too: its energies X X^T (|E| < 400 here) carry float64's
    # relative 1e-16, ~1e-13 absolute, far below the bound (measured: 1e-14).
    d = _fixture(size)
    head = _mmseg_head(d, "explicit").double()
    with torch.no_grad():
        out = head.forward_train(d["input"].double())
    for key, ref in OUTPUTS.items():
        assert out[key].dtype == torch.float64
        torch.testing.assert_close(out[key], d[f"{ref}_float64"], atol=1e-9, rtol=0)


def test_cam_without_the_max_minus_energy_trick_fails_parity(monkeypatch):
    # softmax(E) instead of softmax(max_row(E) - E): a channel attends to its most similar
    # channels instead of its least similar ones.
    d = _fixture(SIZES[0])
    head = _mmseg_head(d)
    monkeypatch.setattr(da, "cam_logits", lambda energy: energy)
    for key in ("out", "cam"):
        parity = compare_to_reference(
            functools.partial(_output, key=key), head, (d["input"],), d[OUTPUTS[key]]
        )
        assert not parity.ok and parity.max_abs_diff > 0.1 * parity.scale, parity
    parity = compare_to_reference(  # the position branch is untouched
        functools.partial(_output, key="pam"), head, (d["input"],), d["output_pam"]
    )
    assert parity.ok, parity


@pytest.mark.parametrize("size", SIZES)
def test_maps_and_values_equal_mmseg_softmaxes(size):
    d = _fixture(size)
    head = _mmseg_head(d)
    x = d["input"]
    h, w = x.shape[-2:]
    with torch.no_grad():
        _, record = head(x, return_attention=True)
    pam, cam = d["softmax"]
    assert (
        pam["site"].endswith("self_attention_block.py:154") and pam["full_shape"][1:] == [h * w] * 2
    )
    assert cam["site"].endswith("da_head.py:67")
    assert record.pam_q.shape == (x.shape[0], 4, h, w) and record.cam_input.shape[1] == 32
    for i, p in enumerate(pam["rows"].tolist()):  # every stored query row, p = fy * W + fx
        fy, fx = divmod(p, w)
        maps = DAHead.query_maps(record, fx, fy)
        assert list(maps) == [m.name for m in DAHead.maps] and maps["position"].shape == (h, w)
        assert maps["position"].dtype == torch.float64
        assert abs(float(maps["position"].sum()) - 1) < 1e-9
        torch.testing.assert_close(
            maps["position"].flatten().float(), pam["value"][0, i], atol=1e-5, rtol=0
        )
        assert DAHead.reach(record, fx, fy)["position"].all()
    torch.testing.assert_close(record.cam_attention, cam["value"], atol=2e-4, rtol=0)
    cam_in = d["module_io"]["cam"][0]["input"][0]  # (C, h, w): mmseg's CAM input
    for fx, fy in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, h // 2)):
        values = DAHead.query_values(record, fx, fy)
        assert list(values) == [v.name for v in DAHead.values]
        channel, top = values["channel"], values["query_channels"]
        assert channel.dtype == torch.float64 and channel.shape == (32, 32)
        torch.testing.assert_close(channel.float(), cam["value"][0], atol=2e-4, rtol=0)
        torch.testing.assert_close(channel.sum(-1), torch.ones(32, dtype=torch.float64))
        assert top.dtype == torch.int64 and 0 < top.numel() <= da.TOP_CHANNELS
        act = cam_in[:, fy, fx]
        expected = act.topk(da.TOP_CHANNELS).indices
        assert top.tolist() == expected[act[expected] > 0].tolist()
    assert [v.per_query for v in DAHead.values] == [False, True]


def test_one_training_step_reaches_every_classifier():
    torch.manual_seed(0)
    head = DAHead(16, 4, 8, 2).train()
    head.pam.gamma.scale.data.fill_(0.5)  # mmseg starts both at 0: their inputs get no gradient
    head.cam.gamma.scale.data.fill_(0.5)
    x, target = torch.randn(2, 16, 9, 11), torch.randint(0, 4, (2, 9, 11))
    out = head.forward_train(x)
    assert set(out) == set(DAHead.loss_weights) == {"out", "pam", "cam"}
    assert all(v.shape == (2, 4, 9, 11) for v in out.values())
    loss = sum(DAHead.loss_weights[k] * F.cross_entropy(v, target) for k, v in out.items())
    loss.backward()
    for name in ("pam_conv_seg", "cam_conv_seg", "conv_seg"):
        grad = getattr(head, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    grads = {n: p.grad for n, p in head.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["pam.query_project.weight"].abs().sum() > 0
    before = head.pam_conv_seg.weight.detach().clone()
    torch.optim.SGD(head.parameters(), lr=0.1).step()
    assert not torch.equal(before, head.pam_conv_seg.weight)


def test_build_options_and_mmseg_names():
    head = DAHead.build(24, 3, HeadConfig(channels=16, options={"pam_channels": 4}))
    assert head.pam.query_project.out_channels == 4 and head.pam_in_conv.conv.out_channels == 16
    assert DAHead.build(24, 3, HeadConfig(channels=16)).pam.key_project.out_channels == 64
    with pytest.raises(ValueError, match="pam_channels"):
        DAHead.build(24, 3, HeadConfig(channels=16, options={"pam_chanels": 4}))
    # The published R-50-D8 model's decode head: every key and shape, and the config read back.
    listing = (FIXTURES / "danet_r50-d8_keys.txt").read_text().splitlines()
    shapes = {}
    for line in listing:
        if line.startswith("decode_head."):
            name, shape = line.split("\t")
            shapes[name] = torch.Size(ast.literal_eval(shape))  # "(512, 2048, 3, 3)", "()"
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert DAHead.mmseg_config(state) == {
        "decoder_channels": 512,
        "head_options": {"pam_channels": 64},
    }
    ours = DAHead(2048, 19, 512, 64).state_dict()
    assert {f"decode_head.{k}": v.shape for k, v in ours.items()} == shapes
    assert {k.split(".")[1] for k in shapes} == set(DAHead.mmseg.modules)
    step = DAHead.attention_module(HeadConfig(channels=16, options={"pam_channels": 4}))
    assert step(torch.randn(1, 16, 5, 7)).shape == (1, 16, 5, 7)


def test_autocast_keeps_the_channel_energies_in_float32():
    # At 64 x 128 positions the energies reach ~4000, where bfloat16 rounds by 16-32.
    torch.manual_seed(0)
    f = torch.randn(1, 64, 8192).relu()
    exact = da.channel_attention(f.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = da.channel_attention(f)
        naive = da.cam_logits(torch.bmm(f, f.transpose(1, 2))).softmax(-1)  # bf16 energies
    assert attn.dtype == torch.float32
    # float32 rounding of the energies (eps * 2000 in the logits), as mmseg's own fp32 CAM.
    torch.testing.assert_close(attn.double(), exact, atol=5e-4, rtol=0)
    assert (naive.double() - exact).abs().max() > 0.1
    half = da.channel_attention(f.half())  # an fp16 model: no overflow at 65504
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
