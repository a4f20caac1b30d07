"""What every registered head must do, whatever its attention: batch equals per-image, any
H x W, bf16 autocast forward and backward, forward hooks on every leaf, the inference-fused
head equal to the plain one, ONNX export at a dynamic size. A head registered in
``isa_explorer.heads`` is tested here without a line of its own."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import small_isanet

from isa_explorer import heads
from isa_explorer.export import export_model, load_exported
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.fusion import fuse_for_inference

HEADS = heads.names()
#: Head options of a small head (16 channels): the published ones are for 512.
SMALL_OPTIONS = {"da": {"pam_channels": 4}, "ema": {"ema_channels": 16, "num_bases": 8}}


def small_head(name: str, seed: int = 0) -> heads.Head:
    """A 16-channel head on 24 input channels, 3 classes, no dropout."""
    torch.manual_seed(seed)
    config = HeadConfig(16, 8, 0.0, down_factor=(4, 4), options=SMALL_OPTIONS.get(name, {}))
    head = heads.get(name).build(24, 3, config)
    for m in head.modules():  # BatchNorm statistics other than the identity's, so they count
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return head


def _close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float32 rounding: ``rel`` of the output's magnitude."""
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= rel * scale, (got - expected).abs().max()


@pytest.mark.parametrize("name", HEADS)
def test_batch_equals_per_image_and_nothing_is_stored_on_the_head(name):
    head = small_head(name).eval()
    attributes = set(vars(head))
    x = torch.randn(3, 24, 11, 13)
    with torch.no_grad():
        batch = head(x)
        one = torch.cat([head(x[i : i + 1]) for i in range(3)])
        if head.maps:
            again, record = head(x, return_attention=True)
            _close(again, batch)
            assert record.nbytes > 0
    _close(batch, one)
    assert set(vars(head)) == attributes  # a record comes back as a value, not on the module


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("size", [(1, 9), (7, 1), (5, 7), (9, 31), (17, 12)])
def test_any_size(name, size):
    head = small_head(name).eval()
    with torch.no_grad():
        y = head(torch.randn(2, 24, *size))
    assert y.shape == (2, 3, *size) and y.isfinite().all()
    if not head.maps:
        return
    with torch.no_grad():
        _, record = head(torch.randn(1, 24, *size), return_attention=True)
    assert record.size == size
    for fx, fy in ((0, 0), (size[1] - 1, size[0] - 1)):
        for m in type(head).query_maps(record, fx, fy).values():
            m = record.crop(m)
            assert m.shape == size and (m >= 0).all() and float(m.sum()) <= 1 + 1e-9
            if record.padded == record.size:
                assert abs(float(m.sum()) - 1) < 1e-9


@pytest.mark.parametrize("name", HEADS)
def test_bf16_autocast_forward_and_backward_are_finite(name):
    head = small_head(name).train()
    x = torch.randn(2, 24, 12, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = head.forward_train(x)
    loss = sum(w * outs[k].float().square().mean() for k, w in head.loss_weights.items())
    loss.backward()
    assert all(v.isfinite().all() for v in outs.values())
    grads = [p.grad for p in head.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.isfinite().all() for g in grads)
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("mode", ["train", "eval", "no_grad", "fused"])
def test_forward_hooks_fire_on_every_leaf_module(name, mode):
    """A user's hook on any layer sees it run (training outputs included), in every mode."""
    head = small_head(name).train(mode == "train")
    if mode == "fused":
        fuse_for_inference(head)
    leaves = {n: m for n, m in head.named_modules() if not list(m.children())}
    fired: set[str] = set()
    for n, m in leaves.items():
        m.register_forward_hook(lambda mod, i, o, n=n: fired.add(n))
    with torch.set_grad_enabled(mode not in ("no_grad", "fused")):
        head.forward_train(torch.randn(2, 24, 9, 10))
    assert fired == set(leaves), f"never fired: {sorted(set(leaves) - fired)}"


@pytest.mark.parametrize("name", HEADS)
def test_the_fused_head_equals_the_plain_one(name):
    head = small_head(name).eval()
    x = torch.randn(2, 24, 10, 15)
    with torch.no_grad():
        plain = head(x)
        fused = fuse_for_inference(copy.deepcopy(head))(x)
    _close(fused, plain, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in HEADS if n != "isa"])  # ISA's: tests/test_export.py
def test_onnx_export_at_a_dynamic_size(name, tmp_path):
    torch.manual_seed(0)
    model = small_isanet(head=name, head_options=SMALL_OPTIONS.get(name)).eval()
    runner = load_exported(export_model(model, tmp_path / name, "onnx"), threads=2)
    gen = torch.Generator().manual_seed(0)
    for h, w in ((97, 131), (64, 48)):  # not the export example's 200x264
        images = torch.randint(0, 256, (1, 3, h, w), generator=gen).float()
        with torch.no_grad():
            expected = model(model.normalize(images))
        got = torch.from_numpy(runner(images))
        assert got.shape == expected.shape
        _close(got, expected, rel=1e-4)


@pytest.mark.parametrize("name", heads.with_attention())
def test_the_explorer_and_the_api_serve_every_heads_maps(name, tmp_path):
    """Each head's maps reach the explorer's panels and the API through its declarations:
    one panel per map, each map a distribution over the feature grid, the reach of its step."""
    import numpy as np

    from isa_explorer.explorer import api
    from isa_explorer.explorer.served_model import ExplorerModel
    from isa_explorer.explorer.service import Explorer

    torch.manual_seed(0)
    model = small_isanet(head=name, head_options=SMALL_OPTIONS.get(name), classes=3).eval()
    model.save_pretrained(tmp_path / name)
    ex = Explorer(ExplorerModel(tmp_path / name))
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    state = ex.load_image("k", image)
    cls = heads.get(name)
    for x, y in ((40, 20), (0, 0), (95, 63)):
        result = ex.click("k", x, y)
        assert list(result.panels) == [m.name for m in cls.maps]
        record = state.cache.record
        reach = cls.reach(record, *result.cell)
        for info in cls.maps:
            m = result.maps.maps[info.name].double()
            assert m.shape == (8, 12) and (m >= 0).all()
            if record.padded == record.size:  # else a share lies on the padding
                assert float(m.sum()) == pytest.approx(1.0, abs=1e-5), info.name
            assert float(m.sum()) <= 1 + 1e-5, info.name
            if info.reach is not None:  # nothing outside the step's reach
                assert float(m[~reach[info.reach]].sum()) < 1e-9, info.name
        values = cls.query_values(record, *result.cell)
        assert list(values) == [v.name for v in cls.values]
    out = api.attention_summary(ex, api.analyse_cached(ex, image), 10, 20)
    assert out["head"] == name and list(out["maps"]) == [m.name for m in cls.maps]
    from isa_explorer.explorer.app import build_app

    ids = {getattr(b, "elem_id", None) for b in build_app(explorer=ex).blocks.values()}
    assert {f"map-{m.name}" for m in cls.maps} <= ids  # the app has a panel for each map
