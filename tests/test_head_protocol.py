"""The head protocol: a head defined in this file alone is served, drawn and costed.

``LocalWindowHead`` attends, at every cell, to the 5x5 cells around it (keys and values
zero-padded at the border, so border queries put some attention on padding). It is registered
here and nowhere else; the explorer, its API, the notebook view, the app's layout and the
benchmark's analytic model learn about it from the registry.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_isanet
from torch import nn

from isa_explorer import heads
from isa_explorer.heads.protocol import Cost, HeadConfig, MapInfo, Record, relation_cost
from isa_explorer.heads.shell import ContextHead

R = 2  # window radius: 5x5


@dataclass
class WindowRecord(Record):
    """``q (B, Ck, h, w)`` and the zero-padded keys ``k (B, Ck, h + 4, w + 4)``."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float

    @property
    def padded(self) -> tuple[int, int]:
        return self.size[0] + 2 * R, self.size[1] + 2 * R

    @property
    def offset(self) -> tuple[int, int]:
        return R, R


class LocalWindowHead(ContextHead):
    name = "local5-test"
    maps = (MapInfo("window", "Window", "the 5x5 cells around the query", "window"),)
    main_map = "window"

    def __init__(self, in_channels: int, classes: int, channels: int, key_channels: int):
        super().__init__(in_channels, classes, channels, 0.0, "explicit")
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.scale = key_channels**-0.5

    @classmethod
    def build(cls, in_channels: int, classes: int, config: HeadConfig) -> LocalWindowHead:
        return cls(in_channels, classes, config.channels, config.key_channels)

    def context(self, x, return_attention=False):
        residual = self.in_conv(x)  # (B, C, h, w)
        b, c, h, w = residual.shape
        q, k, v = self.query(residual), self.key(residual), self.value(residual)
        kp, vp = F.pad(k, (R,) * 4), F.pad(v, (R,) * 4)  # (B, C., h + 4, w + 4)
        kw = F.unfold(kp, 2 * R + 1).view(b, k.shape[1], -1, h * w)  # (B, Ck, 25, N)
        vw = F.unfold(vp, 2 * R + 1).view(b, c, -1, h * w)  # (B, C, 25, N)
        weights = (torch.einsum("bcn,bcjn->bjn", q.flatten(2), kw) * self.scale).softmax(1)
        out = torch.einsum("bjn,bcjn->bcn", weights, vw).view(b, c, h, w)
        record = WindowRecord((h, w), q.detach(), kp.detach(), self.scale)
        return out, residual, record if return_attention else None

    @classmethod
    def query_maps(cls, record, fx, fy):
        q, k = record.q[0].double(), record.k[0].double()
        window = k[:, fy : fy + 2 * R + 1, fx : fx + 2 * R + 1]  # (Ck, 5, 5), padded coords
        weights = (torch.einsum("c,cij->ij", q[:, fy, fx], window) * record.scale).flatten()
        m = torch.zeros(record.padded, dtype=torch.float64)
        m[fy : fy + 2 * R + 1, fx : fx + 2 * R + 1] = weights.softmax(0).view(5, 5)
        return {"window": m}

    @classmethod
    def reach(cls, record, fx, fy):
        h, w = record.size
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[max(fy - R, 0) : fy + R + 1, max(fx - R, 0) : fx + R + 1] = True
        return {"window": mask}

    @classmethod
    def cost(cls, h, w, config, impl="fused", batch=1) -> Cost:
        n = h * w
        return relation_cost(n, n * (2 * R + 1) ** 2, 1, config.channels, config.key_channels)


@pytest.fixture(scope="module")
def window_model_dir(tmp_path_factory):
    """A small model with the test head, saved as a model directory."""
    heads.register(LocalWindowHead)
    try:
        torch.manual_seed(0)
        model = small_isanet(
            encoder_depth=3, classes=3, head="local5-test", class_names=["sky", "road", "car"]
        ).eval()
        path = tmp_path_factory.mktemp("window") / "model"
        model.save_pretrained(path)
        yield path
    finally:
        heads.unregister("local5-test")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)


def reference_window(cache, fx, fy):
    """The query's weights from a dense masked softmax over all positions, fp64: every key
    outside the 5x5 window masked out, the window's padded keys (zero, logit 0) counted apart."""
    rec = cache.record
    h, w = rec.size
    q, k = rec.q[0].double().flatten(1), rec.crop(rec.k[0]).double().flatten(1)  # (Ck, N)
    logits = (q[:, fy * w + fx] @ k) * rec.scale  # (N,)
    rows, cols = torch.arange(h)[:, None], torch.arange(w)[None, :]
    inside = ((rows - fy).abs() <= R) & ((cols - fx).abs() <= R)  # (h, w)
    n_pad = (2 * R + 1) ** 2 - int(inside.sum())  # window cells on the padding
    e = torch.where(inside.flatten(), logits.exp(), 0.0)
    return (e / (e.sum() + n_pad)).view(h, w), n_pad / (e.sum() + n_pad)


def test_the_explorer_serves_the_heads_maps(window_model_dir, image):
    from isa_explorer.explorer.served_model import ExplorerModel
    from isa_explorer.explorer.service import Explorer

    ex = Explorer(ExplorerModel(window_model_dir))
    state = ex.load_image("k", image)
    assert state.cache.head is LocalWindowHead
    for x, y in ((45, 35), (0, 0)):  # an inner pixel, then the corner (window on padding)
        result = ex.click("k", x, y)
        fx, fy = result.cell
        want, on_padding = reference_window(state.cache, fx, fy)
        got = result.maps.maps["window"].double()
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        padding_share = 1 - float(got.sum())
        assert abs(padding_share - float(on_padding)) < 1e-6
        assert (padding_share > 0.1) == ((x, y) == (0, 0))
        assert list(result.panels) == ["window"] and result.panels["window"].ndim == 3
        assert "Most attended cells" in result.regions


def test_the_api_returns_the_heads_maps(window_model_dir, image):
    from isa_explorer.explorer import api
    from isa_explorer.explorer.served_model import ExplorerModel
    from isa_explorer.explorer.service import Explorer

    ex = Explorer(ExplorerModel(window_model_dir))
    out = api.attention_summary(ex, api.analyse_cached(ex, image), 10, 20)
    assert out["head"] == "local5-test" and list(out["maps"]) == ["window"]
    h, w = out["feature_size"]["height"], out["feature_size"]["width"]
    assert np.asarray(out["maps"]["window"]).shape == (h, w)


def test_the_notebook_view_and_the_app_draw_the_heads_maps(window_model_dir, image):
    import matplotlib

    matplotlib.use("Agg")
    from isa_explorer.explorer.app import build_app
    from isa_explorer.explorer.served_model import ExplorerModel
    from isa_explorer.explorer.service import Explorer
    from isa_explorer.explorer.widgets.attention_view import AttentionView

    view = AttentionView(ExplorerModel(window_model_dir))
    view.load_image(image)
    assert list(view.axes) == ["prediction", "window"]
    assert view.axes["window"].get_title() == "Window"
    assert view.axes["window"].images  # drawn
    demo = build_app(explorer=Explorer(ExplorerModel(window_model_dir)))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert "map-window" in ids and "map-combined" not in ids


def test_the_benchmarks_analytic_model_costs_the_head():
    from isa_explorer.costs.analytic import analytic_costs

    heads.register(LocalWindowHead)
    try:
        costs = analytic_costs(32, 64, channels=64, isa_channels=32)
        assert costs["local5-test-fused"]["affinity_elements"] == 32 * 64 * 25
        assert costs["isa-fused"]["affinity_elements"] < costs["dense-fused"]["affinity_elements"]
    finally:
        heads.unregister("local5-test")
    assert "local5-test-fused" not in analytic_costs(32, 64)


def test_registry_refuses_unnamed_and_taken_names():
    class Unnamed(LocalWindowHead):
        name = ""

    class Impostor(LocalWindowHead):
        name = "isa"

    with pytest.raises(ValueError, match="no name"):
        heads.register(Unnamed)
    with pytest.raises(ValueError, match="taken"):
        heads.register(Impostor)
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        heads.get("nope")

    class NoBuild(heads.Head):  # a head must say how ISANet builds it
        name = "no-build"

    with pytest.raises(TypeError, match="abstract method 'build'|abstract methods? build"):
        NoBuild()


#: Names, map names, classes and attributes a consumer would test to decide by head.
HEAD_WORDS = {"isa", "dense", "fcn", "long", "short", "combined"}
HEAD_CLASSES = {"ISADecoder", "DenseAttentionDecoder", "FCNHead", "ContextHead", "ISARecord"}
HEAD_ATTRS = {
    "global_relation",
    "local_relation",
    "relation",
    "checkpoint_relations",
    "selective_checkpoint",
    "token_budget",
    "order",
    "grid",
    "first_keys",
}


def dispatches(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` for every test of a head's name, class or attribute in ``tree``."""
    found = []
    methods = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}  # ax.grid(...)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Constant) and side.value in HEAD_WORDS:
                    found.append((node.lineno, f"compares with {side.value!r}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            fn, args = node.func.id, node.args
            name = args[1] if fn in ("hasattr", "getattr") and len(args) > 1 else None
            if isinstance(name, ast.Constant) and name.value in HEAD_ATTRS:
                found.append((node.lineno, f"{fn}(..., {args[1].value!r})"))
            if fn in ("isinstance", "issubclass"):
                names = {n.id for n in ast.walk(args[1]) if isinstance(n, ast.Name)}
                if names & HEAD_CLASSES:
                    found.append((node.lineno, f"{fn}(..., {sorted(names & HEAD_CLASSES)})"))
        elif (
            isinstance(node, ast.Attribute) and node.attr in HEAD_ATTRS and id(node) not in methods
        ):
            found.append((node.lineno, f".{node.attr}"))
    return found


def test_no_consumer_dispatches_on_a_head():
    """Outside ``isa_explorer/heads/`` nothing tests a head's name, class or attributes: the
    app, notebook views, API, probes, benchmarks, export, training and conversion ask the
    registry and the head's declarations. (``widgets/grouping_view.py`` and ``cost_view.py``
    teach ISA's own grouping and use ISA by name, without dispatching.)"""
    package = Path(heads.__file__).parents[1]
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("heads/") or rel.endswith(("grouping_view.py", "cost_view.py")):
            continue
        found += [f"{rel}:{n}: {what}" for n, what in dispatches(ast.parse(path.read_text()))]
    assert not found, "head dispatch outside the registry:\n" + "\n".join(found)


def test_the_dispatch_check_can_fail():
    code = """
if model.head == "fcn": pass
if hasattr(decoder, "global_relation"): pass
if isinstance(m.decoder, ISADecoder): pass
n = cache.grid.gh
"""
    assert [w for _, w in dispatches(ast.parse(code))] == [
        "compares with 'fcn'",
        "hasattr(..., 'global_relation')",
        "isinstance(..., ['ISADecoder'])",
        ".grid",
    ]
