"""The ISA decoder: parity with mmsegmentation, fused vs explicit, grouping geometry."""

import functools

import pytest
import torch
from parity import compare_to_reference

from isa_explorer.heads.dense import DenseAttentionDecoder
from isa_explorer.heads.grid import GroupGrid
from isa_explorer.heads.isa import ISADecoder
from isa_explorer.models.fusion import fuse_for_inference
from isa_explorer.models.layers import attention


@pytest.fixture(scope="module")
def mmseg_head(fixtures_dir):
    return torch.load(fixtures_dir / "isahead_small.pt", weights_only=True)


@pytest.mark.parametrize(
    "impl,token_budget,fused",
    [
        ("explicit", None, False),
        ("fused", None, False),
        ("explicit", None, True),
        ("fused", None, True),
        ("fused", 1, True),
    ],
)
def test_matches_mmsegmentation_isahead(mmseg_head, impl, token_budget, fused):
    # Without autograd the fused path streams the attention sequences in chunks; a budget of
    # one token makes every chunk a single row of sequences. With autograd the whole map runs.
    cfg = mmseg_head["config"]
    head = ISADecoder(
        cfg["in_channels"],
        cfg["num_classes"],
        cfg["channels"],
        cfg["isa_channels"],
        cfg["down_factor"],
        attn_impl=impl,
    ).eval()
    head.load_state_dict(mmseg_head["state_dict"], strict=True)
    head.token_budget = token_budget
    if fused:
        head = fuse_for_inference(head)
    assert set(mmseg_head["inputs"]) == {"20x27", "16x16", "9x31"}
    for name, x in mmseg_head["inputs"].items():
        expected = mmseg_head["outputs"][name]
        for grad in (False, True):
            # mmseg's float32 logits against ours in float64, within a few times our own
            # float32 rounding (tests/parity.py): robust across oneDNN builds.
            run = functools.partial(_head_logits, grad=grad)
            parity = compare_to_reference(run, head, (x,), expected)
            assert parity.ok, f"{name} {grad=}: {parity}"
            assert parity.tolerance < 1e-4 * parity.scale, f"{name} {grad=}: {parity}"


def _head_logits(head: ISADecoder, x: torch.Tensor, grad: bool) -> torch.Tensor:
    with torch.set_grad_enabled(grad):
        return head(x).detach()


def test_padding_is_symmetric_like_mmseg():
    g = GroupGrid.of(9, 31, (8, 8))
    assert (g.gh, g.gw, g.pad_top, g.pad_left) == (2, 4, 3, 0)
    x = torch.arange(9 * 31.0).view(1, 1, 9, 31)
    p = g.pad(x)
    assert p.shape[-2:] == (16, 32)
    assert p[0, 0, 3, 0] == 0 and p[0, 0, 3 + 8, 30] == x[0, 0, 8, 30]
    torch.testing.assert_close(g.crop(p), x)


@pytest.mark.parametrize("step", ["long", "short"])
def test_group_tokens_round_trip_and_membership(step):
    g = GroupGrid.of(16, 24, (4, 8))
    rows = torch.arange(16.0).view(1, 1, 16, 1).expand(2, 1, 16, 24)
    cols = torch.arange(24.0).view(1, 1, 1, 24).expand(2, 1, 16, 24)
    x = torch.cat([rows, cols], 1)  # (2, 2, 16, 24): each position carries its coordinates
    t = g.to_tokens(x, step)  # (B * groups, L, 2)
    torch.testing.assert_close(g.to_map(t, step), x)
    if step == "long":  # members share the offset inside the block: rows 4 apart, cols 8 apart
        assert t.shape == (2 * 4 * 8, 4 * 3, 2)
        assert torch.all(t[..., 0] % 4 == t[:, :1, 0] % 4) and torch.all(
            t[..., 1] % 8 == t[:, :1, 1] % 8
        )
    else:  # members share the block
        assert t.shape == (2 * 4 * 3, 4 * 8, 2)
        assert torch.all(t[..., 0] // 4 == t[:, :1, 0] // 4)
    other = "short" if step == "long" else "long"
    torch.testing.assert_close(g.swap(t, step), g.to_tokens(x, other))


def test_fused_value_split_equals_explicit():
    torch.manual_seed(0)
    q, k = torch.randn(3, 50, 16), torch.randn(3, 50, 16)
    for cv in (16, 32, 48, 20):
        v = torch.randn(3, 50, cv)
        torch.testing.assert_close(
            attention(q, k, v, 0.25, "fused"),
            attention(q, k, v, 0.25, "explicit"),
            atol=1e-5,
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="fused"):
        attention(q, k, v, 0.25, "sparse")


def _twins(cls, **kw):
    torch.manual_seed(0)
    a = cls(attn_impl="explicit", **kw)
    b = cls(attn_impl="fused", **kw)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    "cls,kw",
    [
        (ISADecoder, dict(in_channels=24, classes=3, channels=32, isa_channels=16, dropout=0.0)),
        (
            ISADecoder,
            dict(
                in_channels=24,
                classes=3,
                channels=32,
                isa_channels=16,
                dropout=0.0,
                order="short-long",
            ),
        ),
        (
            DenseAttentionDecoder,
            dict(in_channels=24, classes=3, channels=32, isa_channels=16, dropout=0.0),
        ),
    ],
)
def test_fused_and_explicit_agree_with_gradients(cls, kw):
    a, b = _twins(cls, **kw)
    x = torch.randn(2, 24, 19, 21)
    # fp32 forward, both BatchNorm modes, to 1e-5.
    for mode in ("train", "eval"):
        getattr(a, mode)(), getattr(b, mode)()
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)
    # Gradients: fp32 in eval mode; float64 in training mode (batch statistics of a ReLU'd
    # channel that is almost constant amplify fp32 rounding alike on both paths).
    for mode, dtype, tol in (("eval", torch.float32, 1e-4), ("train", torch.float64, 1e-8)):
        a2, b2 = (getattr(m.to(dtype), mode)() for m in (a, b))
        xa = x.to(dtype).clone().requires_grad_()  # two distinct leaves
        xb = x.to(dtype).clone().requires_grad_()
        ya, yb = a2(xa), b2(xb)
        w = torch.randn_like(ya)
        a2.zero_grad(), b2.zero_grad()
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(ya, yb, atol=tol, rtol=tol)
        assert xa.grad is not None and xb.grad is not None and xa.grad.abs().sum() > 0
        torch.testing.assert_close(xa.grad, xb.grad, atol=tol, rtol=tol)
        for (name, pa), pb in zip(a2.named_parameters(), b2.parameters(), strict=True):
            torch.testing.assert_close(pa.grad, pb.grad, atol=tol, rtol=tol, msg=f"{mode} {name}")


def test_order_ablation_changes_the_output():
    torch.manual_seed(0)
    ls = ISADecoder(8, 3, 16, 8, order="long-short").eval()
    sl = ISADecoder(8, 3, 16, 8, order="short-long").eval()
    sl.load_state_dict(ls.state_dict())
    x = torch.randn(1, 8, 16, 16)
    assert not torch.allclose(ls(x), sl(x), atol=1e-4)
    with pytest.raises(ValueError, match="order"):
        ISADecoder(8, 3, 16, 8, order="diagonal")


def test_capture_leaves_outputs_and_statistics_unchanged():
    torch.manual_seed(0)
    head = ISADecoder(8, 3, 16, 8, dropout=0.0).train()
    x = torch.randn(2, 8, 12, 20)
    before = head.in_conv.bn.running_mean.clone()
    y = head(x)
    after_one = head.global_relation.key_project[0].bn.running_mean.clone()
    head.load_state_dict(head.state_dict())
    torch.manual_seed(0)
    head2 = ISADecoder(8, 3, 16, 8, dropout=0.0).train()
    attributes = set(vars(head2))
    y2, store = head2(x, return_attention=True)
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(after_one, head2.global_relation.key_project[0].bn.running_mean)
    assert not torch.equal(before, head.in_conv.bn.running_mean)
    assert store.long_q.shape == (2, 8, 16, 24) and store.grid.padded == (16, 24)
    # Nothing was written on the module: the queries and keys came back as a return value.
    assert set(vars(head2)) == attributes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in head2.modules())


@pytest.mark.parametrize("cls", [ISADecoder, DenseAttentionDecoder])
@pytest.mark.parametrize("mode", ["train", "eval", "no_grad", "fused", "fused_grad"])
def test_forward_hooks_fire_on_every_leaf_module(cls, mode):
    """A user's hook on any layer sees it run, whatever the mode (feature extraction, captum),
    also on the model fused for inference (its BatchNorms are ``nn.Identity`` leaves there)."""
    torch.manual_seed(0)
    decoder = cls(8, 3, 16, 8)
    decoder.train(mode == "train")
    if mode.startswith("fused"):
        fuse_for_inference(decoder)
    leaves = {n: m for n, m in decoder.named_modules() if not list(m.children())}
    fired: set[str] = set()
    for name, m in leaves.items():
        m.register_forward_hook(lambda mod, i, o, name=name: fired.add(name))
    with torch.set_grad_enabled(mode not in ("no_grad", "fused")):
        decoder(torch.randn(2, 8, 10, 14))
    assert fired == set(leaves), f"never fired: {sorted(set(leaves) - fired)}"
    assert len(leaves) > 20  # the relation blocks' projections, BatchNorms and ReLUs included


def test_group_grid_geometry_names_each_cells_block_and_long_range_group():
    """The geometry probes and rendering use: blocks, offsets, group members, block edges."""
    g = GroupGrid.of(9, 31, (4, 8))  # padded to 12 x 32: top 1, left 0
    assert (g.gh, g.gw, g.pad_top, g.pad_left) == (3, 4, 1, 0)
    for fy in range(9):
        for fx in range(31):
            bi, bj, li, lj = g.locate(fx, fy)
            r0, c0, r1, c1 = g.block_bounds(bi, bj)
            assert r0 <= fy < r1 and c0 <= fx < c1  # the cell lies in its block
            rows, cols = g.group_cells(li, lj)
            assert fy in rows and fx in cols  # ... and in its long-range group
            assert all((r + g.pad_top) % g.lh == li for r in rows)
    assert g.block_bounds(0, 0) == (0, 0, 3, 8)  # the first block row is cut by the padding
    assert g.block_edges() == ([3, 7], [8, 16, 24])
    ids = g.group_ids("long").view(12, 32)
    assert ids.unique().numel() == 4 * 8 and ids[0, 0] == ids[4, 8] != ids[1, 0]
    ids = g.group_ids("short").view(12, 32)
    assert ids.unique().numel() == 3 * 4 and ids[0, 0] == ids[3, 7] != ids[4, 0]
