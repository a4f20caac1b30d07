"""mmseg's criss-cross head (CCNet): parity with mmsegmentation, maps, autocast, export."""

import functools
from pathlib import Path

import pytest
import torch
from parity import compare_to_reference

from isa_explorer.heads import HeadConfig, get
from isa_explorer.heads.cc import CCHead, CrissCrossPasses
from isa_explorer.models.fusion import fuse_for_inference

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["cchead_small_1x64x20x27.pt", "cchead_small_2x64x16x16.pt"]


@functools.cache
def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def _mmseg_head(d: dict) -> CCHead:
    c = d["config"]
    head = CCHead(c["in_channels"], c["num_classes"], c["channels"], c["recurrence"])
    head.load_state_dict(d["state_dict"], strict=True)
    return head.eval()


def _logits(head: CCHead, x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return head(x).detach()


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("grad", [False, True])
def test_matches_mmsegmentation_cchead(name, fused, grad):
    d = _fixture(name)
    head = _mmseg_head(d)
    if fused:
        plain = _logits(head, d["input"])
        head = fuse_for_inference(head)
        torch.testing.assert_close(_logits(head, d["input"]), plain, atol=1e-5, rtol=1e-5)
    run = functools.partial(_logits, grad=grad)
    parity = compare_to_reference(run, head, (d["input"],), d["output"])
    assert parity.ok, parity
    assert parity.tolerance < 1e-4 * parity.scale, parity


@pytest.mark.parametrize("name", SMALL)
def test_float64_matches_mmsegmentation_float64(name):
    d = _fixture(name)
    out = _logits(_mmseg_head(d).double(), d["input"].double())
    assert (out - d["output_float64"]).abs().max() < 1e-9


def test_dropping_the_diagonal_mask_fails_parity(monkeypatch):
    """Without mmcv's -inf on the column part's diagonal the query is counted twice (once in
    its row, once in its column): parity must catch it."""
    d = _fixture(SMALL[0])
    head = _mmseg_head(d)
    monkeypatch.setattr(torch.Tensor, "masked_fill", lambda t, mask, value: t)
    parity = compare_to_reference(_logits, head, (d["input"],), d["output"])
    assert not parity.ok, parity


def _dense(a: torch.Tensor) -> torch.Tensor:
    """A pass's softmax ``(H, W, H + W)`` as the ``(N, N)`` matrix (tests only, small sizes)."""
    h, w = a.shape[:2]
    dense = torch.zeros(h * w, h * w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            dense[i * w + j, torch.arange(h) * w + j] += a[i, j, :h].double()  # column
            dense[i * w + j, i * w + torch.arange(w)] += a[i, j, h:].double()  # row
    return dense


@pytest.mark.parametrize("name", SMALL)
def test_maps_equal_mmcvs_softmaxes_and_their_product(name):
    d = _fixture(name)
    head = _mmseg_head(d)
    with torch.no_grad():
        _, record = head(d["input"], return_attention=True)
    assert record.q.shape[:2] == (d["input"].shape[0], 2) and record.q.shape[2] == 4
    first, second = (e["value"][0] for e in d["softmax"])  # (H, W, H + W), image 0
    h, w = first.shape[:2]
    a1, a2 = _dense(first), _dense(second)
    combined = a2 @ a1  # the two passes composed, no residual or gamma
    cells = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 2, h // 2), (3, 11), (13, 2)]
    for fx, fy in cells:
        assert first[fy, fx, fy] == 0  # mmcv's -inf: the query's column weight is exactly 0
        maps = CCHead.query_maps(record, fx, fy)
        assert list(maps) == [m.name for m in CCHead.maps]
        p = fy * w + fx
        for key, ref in (("first", a1), ("second", a2), ("combined", combined)):
            assert maps[key].shape == (h, w) and maps[key].dtype == torch.float64
            torch.testing.assert_close(maps[key].flatten(), ref[p], atol=1e-5, rtol=0)
            assert abs(float(maps[key].sum()) - 1) < 1e-9
        reach = CCHead.reach(record, fx, fy)
        for key in ("first", "second"):
            assert (
                reach[key].sum() == h + w - 1 and reach[key][fy].all() and reach[key][:, fx].all()
            )
            assert maps[key][~reach[key]].abs().max() == 0
        assert (maps["combined"] > 0).all()  # two passes reach every cell


def test_three_passes_compose_in_order():
    """``recurrence=3`` (an option): ``combined`` is ``A3 A2 A1``, from the record's q, k."""
    torch.manual_seed(0)
    config = HeadConfig(channels=16, options={"recurrence": 3})
    head = get("cc").build(8, 3, config).eval()
    with torch.no_grad():
        head.cca.gamma.scale.fill_(1.0)
        _, record = head(torch.randn(1, 8, 5, 7), return_attention=True)
    assert record.q.shape == (1, 3, 2, 5, 7)
    passes = []
    for q, k in zip(record.q[0].double(), record.k[0].double(), strict=True):  # (Ck, h, w)
        e_col = torch.einsum("chw,ciw->hwi", q, k)
        e_col = e_col.masked_fill(torch.eye(5, dtype=torch.bool)[:, None], float("-inf"))
        e_row = torch.einsum("chw,chj->hwj", q, k)
        passes.append(_dense(torch.cat([e_col, e_row], -1).softmax(-1)))
    combined = passes[2] @ passes[1] @ passes[0]
    for fx, fy in [(0, 0), (6, 4), (3, 2)]:
        maps = CCHead.query_maps(record, fx, fy)
        torch.testing.assert_close(maps["combined"].flatten(), combined[fy * 7 + fx])
        torch.testing.assert_close(maps["second"].flatten(), passes[1][fy * 7 + fx])
    with pytest.raises(ValueError, match="recurrence"):
        CCHead(8, 3, 16, recurrence=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_and_backward_are_finite(dtype):
    """The pure PyTorch block runs under CPU autocast in bfloat16 and float16 (CCNet's fp16
    failures, CCNet #76 and mmseg #370, came from mmcv's compiled op, not from the math)."""
    d = _fixture(SMALL[1])
    head = _mmseg_head(d)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        low = head(d["input"])
    # bfloat16 measured 0.6 % of max |logit|, float16 0.06 %.
    assert low.dtype == dtype
    assert (low.float() - d["output"]).abs().max() < 0.02 * d["output"].abs().max()
    x = d["input"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = head.train()(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_names_and_shapes_match_the_released_ccnet():
    rows = (FIXTURES / "ccnet_r50-d8_keys.txt").read_text().splitlines()
    listed = {}
    for row in rows:
        if row.startswith("decode_head."):
            key, shape = row.split("\t")
            listed[key.removeprefix("decode_head.")] = tuple(
                int(s) for s in shape[1:-1].split(",") if s
            )
    with torch.device("meta"):
        head = CCHead(2048, 19, 512)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == listed
    assert {k.split(".")[0] for k in listed} == set(CCHead.mmseg.modules)
    state = {f"decode_head.{k}": torch.empty(s, device="meta") for k, s in listed.items()}
    assert CCHead.mmseg_config(state)["decoder_channels"] == 512
    assert get("cc") is CCHead and CCHead.main_map == "combined"
    assert [m.reach for m in CCHead.maps] == ["first", "second", None]


def test_attention_module_is_the_heads_context_step():
    torch.manual_seed(0)
    step = CCHead.attention_module(HeadConfig(channels=16))
    assert isinstance(step, CrissCrossPasses) and step.recurrence == 2
    head = CCHead(8, 3, 16).eval()
    head.cca.load_state_dict(step.cca.state_dict())
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(step(x), head.context(x)[0])
