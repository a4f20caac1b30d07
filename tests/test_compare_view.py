"""Notebook 7's Compare view, driven as JupyterLab would (clicks and controls), offline.

The view runs on the Agg backend here (no kernel, no ipympl); under ``%matplotlib widget`` the
same callbacks receive the canvas's events. It draws what :class:`Comparison` computes: these
tests check that what is drawn is what ``Comparison.click`` answers.
"""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
pytest.importorskip("ipywidgets")

from isa_explorer.explorer import map_stats  # noqa: E402
from isa_explorer.explorer.compare import Comparison  # noqa: E402
from isa_explorer.explorer.compare_panels import fmt  # noqa: E402
from isa_explorer.explorer.widgets import CompareView  # noqa: E402
from isa_explorer.pretrained import DEFAULT_MODELS_DIR  # noqa: E402

NAMES = ["isa", "cc", "fcn"]  # two heads with attention and one without


@pytest.fixture(scope="module")
def comparison():
    return Comparison({n: DEFAULT_MODELS_DIR / n for n in ("isa", "cc", "fcn", "gc")})


@pytest.fixture
def view(comparison):
    view = CompareView(NAMES, comparison=comparison)
    view.load_example(3)
    return view


def _click(view: CompareView, row: str, name: str, x: int, y: int) -> None:
    """A matplotlib button press in a panel at image pixel ``(x, y)``."""
    ax = view.axes[row][name]
    view.on_click(SimpleNamespace(inaxes=ax, xdata=x + 0.4, ydata=y + 0.4))


def test_a_click_moves_the_query_and_draws_the_comparisons_numbers(view, comparison):
    comparison.load_example("reference", 3, "as drawn", NAMES)  # a session of its own
    forwards = []
    hooks = [
        comparison.explorers[n].model.model.register_forward_hook(lambda *_: forwards.append(1))
        for n in NAMES
    ]
    try:
        for row, name, (x, y) in (("prediction", "cc", (40, 100)), ("final", "isa", (200, 30))):
            _click(view, row, name, x, y)
            assert view.result.query == (x, y) and view.state.query == (x, y)
            # the same click in the other session: what the view draws must equal it
            want = {h.name: h for h in comparison.click("reference", x, y).heads}
            for head in view.result.heads:
                text = view.texts[head.name].get_text()
                assert f"predicted {want[head.name].class_name}" in text
                assert head.statistics == want[head.name].statistics
                for key, value in want[head.name].statistics.items():
                    assert f"{map_stats.LABELS[key]}: {fmt(key, value)}" in text
                if head.maps is not None:
                    drawn = np.asarray(view.final_images[head.name].get_array())
                    expected = want[head.name].maps.on_image(head.final_map).double()
                    np.testing.assert_allclose(drawn, expected.clamp_min(1e-300).log10())
            for marker in view._markers:  # the query is marked on every panel
                assert tuple(marker.get_xydata()[0]) == (x + 0.5, y + 0.5)
    finally:
        for hook in hooks:
            hook.remove()
    assert forwards == []  # clicks read the cached records: no network forward


def test_the_final_maps_share_one_colour_scale(view):
    for x, y in ((20, 20), (128, 64)):
        view.select(x, y)
        lo, hi = view.result.scale()
        images = list(view.final_images.values())
        assert set(view.final_images) == {"isa", "cc"}  # FCN has no map
        assert all(im.norm is view.norm for im in images)
        assert all(im.get_clim() == (lo, hi) for im in images)
        assert all(im.get_cmap().name == "inferno" for im in images)
        assert view.colorbar.mappable.norm is view.norm
        assert (view.colorbar.vmin, view.colorbar.vmax) == pytest.approx((lo, hi))
    assert view.axes["final"]["fcn"].get_title() == "fcn: no attention"
    assert "no attention" in view.texts["fcn"].get_text()


def test_a_click_outside_the_panels_is_ignored(view):
    view.select(50, 60)
    before = view.result
    outside = [None, view.axes["text"]["isa"], view.colorbar.ax]
    for ax in outside:
        view.on_click(SimpleNamespace(inaxes=ax, xdata=3.0 if ax else None, ydata=4.0))
    assert view.result is before and view.result.query == (50, 60)


def test_the_controls_reload_choose_heads_and_average(view):
    scene, cue, heads, means = view.controls
    cue.value = "red cue"  # a new image: one analysis per model
    assert "red cue" in view.state.source
    scene.value = 5
    assert view.state.source.startswith("example 5")
    query = view.result.query
    heads.value = ("isa", "gc")  # as a user picks them: only gc is new to the image
    assert view.names == ["isa", "gc"] and list(view.axes["final"]) == ["isa", "gc"]
    assert view.result.query == query and set(view.final_images) == {"isa", "gc"}
    assert [h.name for h in view.result.heads] == ["isa", "gc"]
    heads.value = ("isa",)  # too few: said on the figure, the comparison unchanged
    assert view.names == ["isa", "gc"] and "choose 2 to 4" in view.fig._suptitle.get_text()
    assert "image means: press" in view.texts["isa"].get_text()
    means.click()
    assert set(view.state.averages) == {"isa", "gc"}
    mean = view.state.averages["isa"].means["entropy_fraction"]
    assert f"(mean {fmt('entropy_fraction', mean)})" in view.texts["isa"].get_text()


def test_images_of_other_shapes_and_the_static_copy(view):
    rng = np.random.default_rng(0)
    view.load_image(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "noise")
    assert view.state.size == (96, 96) and view.result.query == (48, 48)
    assert view.axes["final"]["isa"].images[-1].get_extent() == [0, 96, 96, 0]
    assert view.snapshot().data[:4] == b"\x89PNG"
    assert view.widget().children[-1].value[:4] == b"\x89PNG"  # no kernel: a picture


def test_the_view_needs_an_image_and_valid_heads(comparison):
    view = CompareView(NAMES[:2], comparison=comparison)
    with pytest.raises(ValueError, match="load an image first"):
        view.select(1, 1)
    assert view.choose(["cc", "fcn"]) is None  # no image yet: the next one loaded
    assert view.controls[2].value == ("cc", "fcn")  # the control follows code
    view.load_example(7, "blue cue")
    assert [h.name for h in view.result.heads] == ["cc", "fcn"]
    assert (view.controls[0].value, view.controls[1].value) == (7, "blue cue")
    with pytest.raises(Exception, match="choose 2 to 4"):
        CompareView(["isa"], comparison=comparison)
    assert CompareView(comparison).names == ["isa", "cc"]  # its default choice (no nl, da)
