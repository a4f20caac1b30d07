"""The GC head (mmseg's GCHead): parity with mmsegmentation, its context mask, and the head
protocol's behaviours (any size, batching, hooks, autocast, fusion, mmseg names)."""

import functools
from pathlib import Path

import pytest
import torch
from parity import compare_to_reference
from torch import nn

from isa_explorer import ISANet
from isa_explorer.heads.gc import ContextBlock, GCHead
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.fusion import fuse_for_inference

FIXTURES = Path(__file__).parent / "fixtures"
SIZES = ("1x64x20x27", "2x64x16x16")


@functools.cache
def _fixture(size: str) -> dict:
    return torch.load(FIXTURES / f"gchead_small_{size}.pt", weights_only=True)


def _head(d: dict) -> GCHead:
    cfg = d["config"]
    assert (cfg["pooling_type"], cfg["fusion_types"]) == ("att", ("channel_add",))
    head = GCHead(
        cfg["in_channels"], cfg["num_classes"], cfg["channels"], cfg["ratio"], cfg["dropout_ratio"]
    )
    head.load_state_dict(d["state_dict"], strict=True)
    return head.eval()


def _logits(head: GCHead, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return head(x).detach()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fused", [False, True])
def test_matches_mmsegmentation_gchead(size, fused):
    d = _fixture(size)
    head = fuse_for_inference(_head(d)) if fused else _head(d)
    for grad in (False, True):
        run = functools.partial(_logits, grad=grad)
        parity = compare_to_reference(run, head, (d["input"],), d["output"])
        assert parity.ok, f"{size} {fused=} {grad=}: {parity}"
        assert parity.tolerance < 1e-4 * parity.scale, f"{size} {fused=} {grad=}: {parity}"


@pytest.mark.parametrize("size", SIZES)
def test_float64_matches_mmsegmentation_float64(size):
    d = _fixture(size)
    out = _logits(_head(d).double(), d["input"].double())
    assert out.dtype == torch.float64
    assert float((out - d["output_float64"]).abs().max()) < 1e-9


def _channel_softmax(head: GCHead) -> None:
    head.gc_block.softmax = nn.Softmax(dim=1)  # over the mask's single channel: all ones


def _batchnorm_transform(head: GCHead) -> None:
    # The transform's norm as ConvModule's default BatchNorm (same affine weights; in eval
    # its fresh statistics 0 / 1 leave W_1 c + b_1 unnormalised) instead of LayerNorm over
    # [planes, 1, 1].
    ln = head.gc_block.channel_add_conv[1]
    bn = nn.BatchNorm2d(ln.weight.shape[0], eps=ln.eps).eval()
    with torch.no_grad():
        bn.weight.copy_(ln.weight.flatten())
        bn.bias.copy_(ln.bias.flatten())
    head.gc_block.channel_add_conv[1] = bn


@pytest.mark.parametrize("mutate", [_channel_softmax, _batchnorm_transform])
def test_a_defect_fails_parity(mutate):
    d = _fixture(SIZES[0])
    head = _head(d)
    mutate(head)
    parity = compare_to_reference(_logits, head, (d["input"],), d["output"])
    assert not parity.ok, parity


@pytest.mark.parametrize("size", SIZES)
def test_the_context_map_is_mmsegs_softmax_for_every_query(size):
    d = _fixture(size)
    entry = d["softmax"][0]
    assert entry["site"] == "mmcv/cnn/bricks/context_block.py:99" and entry["dim"] == 2
    assert torch.equal(entry["value"], d["gc_attention_mask"])
    n, _, h, w = d["input"].shape
    expected = d["gc_attention_mask"].view(n, h, w).double()  # p = row * W + col
    with torch.no_grad():
        logits, record = _head(d)(d["input"], return_attention=True)
    torch.testing.assert_close(logits, d["output"], atol=1e-4, rtol=0)
    assert record.mask.shape == (n, 1, h, w) and not record.mask.requires_grad
    torch.testing.assert_close(record.mask[:, 0].double(), expected, atol=1e-5, rtol=0)
    first = None
    for fx, fy in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, h // 2), (3, 1)]:
        maps = GCHead.query_maps(record, fx, fy)
        assert list(maps) == [m.name for m in GCHead.maps]
        m = maps["context"]
        assert m.dtype == torch.float64 and m.shape == (h, w)
        assert abs(float(m.sum()) - 1.0) < 1e-9
        torch.testing.assert_close(m, expected[0], atol=1e-5, rtol=0)
        first = m if first is None else first
        assert torch.equal(m, first)  # one map, whatever the query
        assert GCHead.reach(record, fx, fy)["context"].all()


@pytest.mark.parametrize("size", SIZES)
def test_pooled_context_and_channel_add_term_match_mmseg(size):
    d = _fixture(size)
    head, seen = _head(d), {}
    for name in ("gc_block", "gc_block.channel_add_conv"):
        head.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: seen.update({name: (i[0], o)})
        )
    with torch.no_grad():
        head(d["input"])
    for name, (inp, out) in seen.items():
        ref = d["module_io"][name][0]
        for ours, theirs in ((inp, ref["input"]), (out, ref["output"])):
            assert ours.shape == theirs.shape
            # fp32 rounding of convs.0 (3x3, 64 channels) reaches ~1.2e-6 of the block's scale.
            scale = max(float(theirs.abs().max()), 1.0)
            torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=0)
    # The pooled context is sum_p mask_p x_p of the block's input.
    x = d["module_io"]["gc_block"][0]["input"].double()
    mask = d["gc_attention_mask"].double()  # (N, 1, HW)
    pooled = torch.einsum("ncp,nqp->nc", x.flatten(2), mask)
    torch.testing.assert_close(
        pooled.float(), d["module_io"]["gc_block.channel_add_conv"][0]["input"].flatten(1)
    )


def _small(ratio: float = 0.25) -> GCHead:
    torch.manual_seed(0)
    return GCHead(24, 3, 16, ratio, dropout=0.1)


def test_build_reads_the_ratio_and_refuses_unknown_options():
    head = GCHead.build(24, 3, HeadConfig(channels=32, dropout=0.0))
    assert head.gc_block.channel_add_conv[0].out_channels == 8 and head.dropout.p == 0.0
    head = GCHead.build(24, 3, HeadConfig(channels=32, options={"ratio": 0.5}))
    assert head.gc_block.channel_add_conv[1].normalized_shape == (16, 1, 1)
    with pytest.raises(ValueError, match="reduction"):
        GCHead.build(24, 3, HeadConfig(channels=32, options={"reduction": 2}))
    model = ISANet(
        encoder_name="resnet18",
        encoder_weights=None,
        classes=5,
        decoder_channels=32,
        head="gc",
        head_options={"ratio": 0.5},
    )
    assert isinstance(model.decoder, GCHead)
    assert model.decoder.gc_block.channel_add_conv[0].out_channels == 16
    block = GCHead.attention_module(HeadConfig(channels=16))
    assert isinstance(block, ContextBlock)
    assert block(torch.randn(1, 16, 5, 6)).shape == (1, 16, 5, 6)


def _keys_state(path: Path) -> dict[str, torch.Tensor]:
    state = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")
            dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            state[name] = torch.empty(dims, device="meta")
    return state


def test_mmseg_names_and_config_of_the_published_model():
    from isa_explorer.mmseg_spec import infer_spec

    state = _keys_state(FIXTURES / "gcnet_r50-d8_keys.txt")
    assert GCHead.mmseg_config(state) == {
        "decoder_channels": 512,
        "head_options": {"ratio": 0.25},
    }
    spec = infer_spec(state)
    assert spec.head == "gc" and spec.head_kwargs["decoder_channels"] == 512
    ours = GCHead(2048, 19).state_dict()
    theirs = {k[len("decode_head.") :]: v for k, v in state.items() if k.startswith("decode_head.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
    }
    assert {k.split(".")[0] for k in ours} == set(GCHead.mmseg.modules)
    # A width mmcv truncates (int(100 * 0.29) == 28): the ratio read back lands on 29.
    odd = {
        "decode_head.convs.0.conv.weight": torch.empty(100, 8, 3, 3, device="meta"),
        "decode_head.gc_block.channel_add_conv.0.weight": torch.empty(29, 100, 1, 1, device="meta"),
    }
    ratio = GCHead.mmseg_config(odd)["head_options"]["ratio"]
    assert GCHead(8, 2, 100, ratio).gc_block.channel_add_conv[0].out_channels == 29
