"""mmseg's non-local head (``nl``): parity with mmsegmentation 1.2.2, maps, protocol behaviours."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from parity import compare_to_reference

from isa_explorer.heads.nl import NLHead, NonLocal2d
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.fusion import fuse_for_inference

FIXTURES = Path(__file__).parent / "fixtures"
SIZES = ("1x64x20x27", "2x64x16x16")
IMPLS = ("fused", "explicit")


@pytest.fixture(scope="module", params=SIZES)
def ref(request) -> dict:
    return torch.load(FIXTURES / f"nlhead_small_{request.param}.pt", weights_only=True)


def mmseg_head(d: dict, impl: str = "fused") -> NLHead:
    """The fixture's head, built from its mmseg config with its weights (strict)."""
    c = d["config"]
    assert (c["mode"], c["use_scale"]) == ("embedded_gaussian", True)
    head = NLHead(
        c["in_channels"],
        c["num_classes"],
        c["channels"],
        c["reduction"],
        c["dropout_ratio"],
        impl,
    )
    head.load_state_dict(d["state_dict"], strict=True)
    return head.eval()


def logits(head: NLHead, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return head(x).detach()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", ["plain", "grad", "fused_bn"])
def test_fp32_parity_with_mmseg(ref, impl, variant):
    head = mmseg_head(ref, impl)
    if variant == "fused_bn":
        fuse_for_inference(head)
    run = lambda m, x: logits(m, x, grad=variant == "grad")  # noqa: E731
    parity = compare_to_reference(run, head, (ref["input"],), ref["output"])
    assert parity.ok, f"{impl} {variant}: {parity}"
    assert parity.tolerance < 1e-4 * parity.scale, f"{impl} {variant}: {parity}"


@pytest.mark.parametrize("impl", IMPLS)
def test_fp64_parity_with_mmseg(ref, impl):
    head = mmseg_head(ref, impl).double()
    out = logits(head, ref["input"].double())
    assert (out - ref["output_float64"]).abs().max() < 1e-9


def test_block_matches_mmcv_nonlocal2d(ref):
    """mmcv's recorded block input -> output: ``x + BN(conv_out(attention @ g))``."""
    head = mmseg_head(ref)
    (io,) = ref["module_io"]["nl_block"]
    with torch.no_grad():
        torch.testing.assert_close(head.nl_block(io["input"]), io["output"], atol=1e-5, rtol=0)
        torch.testing.assert_close(head.convs[0](ref["input"]), io["input"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_parity_fails_without_the_affinity_scale(ref, impl, monkeypatch):
    """Forgetting ``/ sqrt(Ci)`` (mmcv's ``use_scale``) is caught by the parity check."""
    head = mmseg_head(ref, impl)
    monkeypatch.setattr(head.nl_block, "scale", 1.0)
    parity = compare_to_reference(logits, head, (ref["input"],), ref["output"])
    assert not parity.ok, parity
    assert parity.max_abs_diff > 100 * parity.tolerance, parity


def test_maps_equal_mmseg_softmax(ref):
    head = mmseg_head(ref)
    (sm,) = ref["softmax"]
    assert sm["site"] == "mmcv/cnn/bricks/non_local.py:135" and sm["dim"] == -1
    with torch.no_grad():
        _, record = head(ref["input"], return_attention=True)
    b, _, h, w = ref["input"].shape
    assert record.size == (h, w) and record.q.shape == record.k.shape == (b, 16, h, w)
    assert not record.q.requires_grad and record.scale == 16**-0.5
    rows = sm["rows"].tolist()  # subsampled query rows, p = fy * w + fx
    assert sm["value"].shape == (b, len(rows), h * w)
    worst = 0.0
    for i in range(b):
        image = dataclasses.replace(record, q=record.q[i : i + 1], k=record.k[i : i + 1])
        for r, p in enumerate(rows):
            fy, fx = divmod(p, w)
            m = NLHead.query_maps(image, fx, fy)["nl"]
            assert m.dtype == torch.float64 and m.shape == (h, w)
            assert abs(float(m.sum()) - 1) < 1e-9
            worst = max(worst, float((m.flatten() - sm["value"][i, r].double()).abs().max()))
    assert worst < 1e-5, worst
    corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, h // 2)]
    for fx, fy in corners:
        assert abs(float(NLHead.query_maps(record, fx, fy)["nl"].sum()) - 1) < 1e-9
        assert NLHead.reach(record, fx, fy)["nl"].all()


def test_declarations_build_and_mmseg_names():
    """Registry entry, options from ``HeadConfig``, and the published checkpoint's keys."""
    from isa_explorer import heads

    assert heads.get("nl") is NLHead and NLHead.main_map == "nl"
    assert [m.name for m in NLHead.maps] == ["nl"] and NLHead.maps[0].reach == "nl"
    config = HeadConfig(channels=32, dropout=0.0, attn_impl="explicit", options={"reduction": 4})
    head = NLHead.build(64, 5, config)
    assert head.nl_block.inter_channels == 8 and head.attn_impl == "explicit"
    assert head.dropout.p == 0.0 and head.conv_seg.out_channels == 5
    block = NLHead.attention_module(config)
    assert isinstance(block, NonLocal2d) and block.inter_channels == 8
    assert block(torch.randn(2, 32, 5, 7)).shape == (2, 32, 5, 7)
    with pytest.raises(TypeError):
        NLHead.build(64, 5, HeadConfig(options={"ratio": 2}))
    # The published R-50-D8 checkpoint: our head's keys and shapes are mmseg's decode_head.
    text = (FIXTURES / "nonlocal_r50-d8_keys.txt").read_text()
    listed = {
        name[len("decode_head.") :]: tuple(int(s) for s in re.findall(r"\d+", shape))
        for name, shape in (line.split("\t") for line in text.splitlines()[1:])
        if name.startswith("decode_head.")
    }
    state = {f"decode_head.{k}": torch.empty(s, device="meta") for k, s in listed.items()}
    cfg = NLHead.mmseg_config(state)
    assert cfg == {"decoder_channels": 512, "head_options": {"reduction": 2}}
    with torch.device("meta"):
        full = NLHead(2048, 19, cfg["decoder_channels"], **cfg["head_options"])
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == listed
    assert {k.split(".")[0] for k in listed} == set(NLHead.mmseg.modules)
    del state["decode_head.nl_block.g.conv.weight"]
    with pytest.raises(KeyError):
        NLHead.mmseg_config(state)


def small_head(impl: str = "fused", dropout: float = 0.0) -> NLHead:
    torch.manual_seed(0)
    return NLHead(12, 3, 16, dropout=dropout, attn_impl=impl)


@pytest.mark.parametrize("size", [(1, 9), (7, 1), (5, 11), (13, 6)])
def test_any_size_batch_equals_per_image_and_impls_agree(size):
    fused, explicit = small_head("fused").eval(), small_head("explicit").eval()
    x = torch.randn(3, 12, *size)
    with torch.no_grad():
        y = fused(x)
        assert y.shape == (3, 3, *size)
        torch.testing.assert_close(y, explicit(x), atol=1e-5, rtol=1e-5)
        for i in range(3):
            torch.testing.assert_close(fused(x[i : i + 1]), y[i : i + 1], atol=1e-5, rtol=1e-5)
        y2, record = fused(x, return_attention=True)
    torch.testing.assert_close(y2, y)
    assert record.size == size and record.q.shape == (3, 8, *size)
