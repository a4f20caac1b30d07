"""The notebooks' interactive views, driven as JupyterLab would: clicks and slider moves.

The views run on the Agg backend here; under ``%matplotlib widget`` the same callbacks receive
the canvas's events.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
pytest.importorskip("ipywidgets")

from isa_explorer.attention import query_maps  # noqa: E402
from isa_explorer.costs.analytic import analytic_costs  # noqa: E402
from isa_explorer.explorer.widgets import AttentionView, CostView, GroupingView  # noqa: E402
from isa_explorer.heads.isa import auto_group  # noqa: E402


@pytest.fixture(scope="module")
def attention_view():
    view = AttentionView()
    view.load_example(3)
    return view


def _click(view, panel: str, x: float, y: float) -> None:
    """A matplotlib button press inside ``panel`` at image pixel ``(x, y)``."""
    view.on_click(SimpleNamespace(inaxes=view.axes[panel], xdata=x + 0.4, ydata=y + 0.4))


def test_clicks_draw_the_query_maps_without_a_forward_pass(attention_view):
    view = attention_view
    model = view.explorer.model.model
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        for panel, (x, y) in zip(
            ("prediction", "combined", "long"), ((40, 30), (200, 100), (7, 120)), strict=True
        ):
            _click(view, panel, x, y)
            assert view.result.query == (x, y)
            expected = query_maps(view.state.cache, x, y)
            for name in ("long", "short", "combined"):
                np.testing.assert_array_equal(
                    view.result.maps.maps[name].numpy(), expected.maps[name].numpy()
                )
                # what is drawn is the app's rendering of those maps
                drawn = np.asarray(view._images[name].get_array())
                panel_of = view.explorer.render_click(view.state, expected, view.opacity, False)
                np.testing.assert_array_equal(drawn, panel_of.panels[name])
    finally:
        handle.remove()
    assert forwards == []  # three clicks, no network forward


def test_controls_reload_restyle_and_a_click_outside_is_ignored(attention_view):
    view = attention_view
    scene, cue, _models, opacity, groups, _upload = view.controls
    drawn = {}
    for choice in ("red cue", "blue cue"):  # reloads the scene with that cue: one analysis
        cue.value = choice
        assert choice in view.state.source
        drawn[choice] = view.state.rgb.copy()
    assert not np.array_equal(drawn["red cue"], drawn["blue cue"])
    scene.value = 5
    assert view.state.source.startswith("example 5")
    opacity.value, groups.value = 0.3, True
    assert view.opacity == 0.3 and view.show_groups
    query = view.result.query
    view.on_click(SimpleNamespace(inaxes=None, xdata=None, ydata=None))
    assert view.result.query == query
    assert view.snapshot().data[:4] == b"\x89PNG"


def test_the_dense_head_is_drawn_beside_for_the_same_pixel(tmp_path):
    from conftest import small_isanet

    from isa_explorer.explorer.served_model import ExplorerModel

    small_isanet(classes=7, head="dense").save_pretrained(tmp_path / "dense")
    view = AttentionView(compare=ExplorerModel(tmp_path / "dense"))
    view.load_example(0)
    _click(view, "combined", 50, 60)
    assert view.compare_result.query == (50, 60) and "dense" in view.compare_result.maps.maps
    assert "compare" in view._images


def test_switching_to_a_model_with_other_maps_lays_the_panels_out_again(tmp_path, monkeypatch):
    from conftest import small_isanet

    dense_dir = str(tmp_path / "dense")
    small_isanet(classes=7, head="dense").save_pretrained(dense_dir)
    monkeypatch.setattr(
        "isa_explorer.explorer.widgets.attention_view.cached_zoo_models", lambda: [dense_dir]
    )
    view = AttentionView()
    view.load_example(0)
    assert list(view.axes) == ["prediction", "long", "short", "combined"]
    models = view.controls[2]
    models.value = dense_dir  # as a user picks it: the image is analysed again
    assert list(view.axes) == ["prediction", "dense"] and set(view._images) == set(view.axes)
    assert view.axes["dense"].get_title() == "Dense attention"
    assert list(view.result.panels) == ["dense"]


@pytest.mark.parametrize(
    "settings",
    [
        dict(h=12, w=18, group=4, order="long-short"),
        dict(h=7, w=10, group=4, order="short-long"),  # padded, the ablation order
        dict(h=16, w=16, group=8, order="long-short"),
    ],
)
def test_moving_the_grouping_sliders_keeps_the_support_full(settings):
    view = GroupingView()
    sliders = dict(zip(("h", "w", "group", "order"), view.controls, strict=True))
    for key, value in settings.items():
        sliders[key].value = value  # as a user moves it
    assert (view.h, view.w, view.group, view.order) == tuple(settings.values())
    support = view.support()
    g = view.grid
    assert support.shape == (g.padded[0] * g.padded[1],) * 2
    assert support.all()
    assert "(all)" in view.ax_reach.get_title()


def test_one_step_alone_does_not_reach_everything():
    """The check can fail: with one block there is no long-range step to mix blocks."""
    view = GroupingView(h=12, w=12, group=4)
    g = view.grid
    long_ids = g.group_ids("long").numpy()
    assert not (long_ids[:, None] == long_ids[None, :]).all()
    view.set(query=(11, 11))
    assert view.query == (11, 11)
    event = SimpleNamespace(inaxes=view.ax_grid, xdata=2.0 + g.pad_left, ydata=3.0 + g.pad_top)
    view.on_click(event)
    assert view.query == (2, 3)


def test_cost_sliders_update_the_analytic_numbers_and_the_optimum():
    committed = {"results": [{"module": "isa-explicit", "pass": "forward", "status": "ok",
                              "group": 8, "positions": 2048, "peak_mib": 24.8}]}  # fmt: skip
    view = CostView(committed=committed)
    height, width, channels, group = view.controls
    width.value, channels.value, group.value = 2048, 256, 16
    now = view.costs()
    expected = analytic_costs(64, 256, 16, channels=256, isa_channels=128)
    assert now["isa"]["flops"] == expected["isa-explicit"]["flops"]
    assert view.optimum() == auto_group(64, 256)
    labels = [t.get_text() for t in view.axes[0].get_legend().get_texts()]
    assert any("measured (committed)" in t for t in labels)


def test_a_bad_upload_is_reported_on_the_figure_and_leaves_no_file(attention_view, tmp_path):
    import tempfile

    view = attention_view
    upload = view.controls[5]
    before = set(Path(tempfile.gettempdir()).glob("tmp*.png"))
    state = view.state
    upload.value = ({"name": "holiday.png", "content": b"not an image", "type": "image/png",
                     "size": 12, "last_modified": datetime.now(UTC)},)  # fmt: skip
    assert view.state is state  # nothing replaced
    assert view.fig._suptitle.get_text().startswith("holiday.png: ")
    assert set(Path(tempfile.gettempdir()).glob("tmp*.png")) == before


def test_the_live_canvas_leaves_its_toolbar_a_strip_left_of_the_panels(monkeypatch):
    pytest.importorskip("ipympl")
    from isa_explorer.explorer.widgets import base

    monkeypatch.setattr(base, "in_kernel", lambda: True)  # ipympl's canvas, as in JupyterLab
    fig, axes = base.new_figure(1, 5, (13, 2.0))
    assert fig.canvas.toolbar_position == "left"
    for ax in axes:
        ax.imshow(np.zeros((8, 8)))
        ax.set_axis_off()

    def leftmost_px() -> float:  # the first panel's left edge in screen pixels
        fig.canvas.draw()
        return min(ax.get_window_extent().x0 for ax in axes) * base.LIVE_DPI / fig.dpi

    assert leftmost_px() >= base.TOOLBAR_STRIP_PX
    fig.set_size_inches(20, 2.0)  # the canvas resized in the page: laid out again
    fig.canvas.callbacks.process("resize_event", SimpleNamespace(name="resize_event"))
    left = fig.get_layout_engine().get()["rect"][0]  # the strip, as a fraction of the width
    assert left * 20 * base.LIVE_DPI == pytest.approx(base.TOOLBAR_STRIP_PX)
    assert leftmost_px() >= base.TOOLBAR_STRIP_PX
