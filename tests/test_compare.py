"""The Compare view's service on the embedded default models: one forward pass per image and
head, clicks from the cached records, the statistics of the final maps, costs, downloads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from isa_explorer.explorer import compare_panels as panels
from isa_explorer.explorer.compare import Comparison, ExplorerError
from isa_explorer.explorer.map_stats import MapGrid, map_statistics


@pytest.fixture(scope="module")
def cmp() -> Comparison:
    return Comparison()


@pytest.fixture
def forwards(cmp):
    """Counts of the forward passes of each model's network (encoder hooks)."""
    counts: dict[str, int] = {}
    handles = []
    for name in cmp.names:
        encoder = cmp.explorers[name].model.model.encoder

        def hook(*_args, name=name):
            counts[name] = counts.get(name, 0) + 1

        handles.append(encoder.register_forward_hook(hook))
    yield counts
    for h in handles:
        h.remove()


def test_the_offer_is_every_default_model_by_head_name(cmp):
    assert {"fcn", "isa", "nl", "cc", "da", "gc", "ema"} <= set(cmp.names)
    assert cmp.default_choice() == ["isa", "nl", "cc", "da"]


def test_clicks_read_the_cached_records_and_new_heads_run_once(cmp, forwards):
    cmp.load_example("s", 3, "as drawn", ["isa", "nl", "cc"])
    assert forwards == {"isa": 1, "nl": 1, "cc": 1}
    for x, y in ((0, 0), (255, 127), (100, 60)):
        click = cmp.click("s", x, y)
        assert [h.name for h in click.heads] == ["isa", "nl", "cc"]
    cmp.choose("s", ["isa", "gc", "cc", "fcn"])  # gc and fcn are new; nl is not shown
    assert [h.name for h in cmp.click("s", 5, 5).heads] == ["isa", "gc", "cc", "fcn"]
    cmp.choose("s", ["nl", "isa"])  # nl ran on this image already
    assert [h.name for h in cmp.click("s", 5, 5).heads] == ["nl", "isa"]
    assert forwards == {"isa": 1, "nl": 1, "cc": 1, "gc": 1, "fcn": 1}


def test_a_clicks_statistics_are_those_of_its_final_map_at_the_query_pixel(cmp):
    cmp.load_example("t", 5, "red cue", ["isa", "da", "fcn"])
    click = cmp.click("t", 130, 70)
    state = click.state
    for head in click.heads[:2]:
        cache = state.analyses[head.name].cache
        rows, cols = cache.cell_centres()
        grid = MapGrid.of(
            cache.record,
            cache.stride,
            state.analyses[head.name].labels[rows][:, cols],
            state.truth[rows][:, cols],
        )
        fx, fy = head.maps.query_feature
        expected = map_statistics(
            head.maps.padded[head.final_map][None],
            torch.tensor([fx]),
            torch.tensor([fy]),
            grid,
            torch.tensor([int(state.analyses[head.name].labels[70, 130])]),
            torch.tensor([int(state.truth[70, 130])]),
        )
        assert head.statistics == {k: float(v[0]) for k, v in expected.items()}
        assert "share_true" in head.statistics  # an example scene: its truth is known
    assert click.heads[1].final_map == "position" and click.heads[0].final_map == "combined"
    fcn = click.heads[2]
    assert fcn.maps is None and fcn.statistics == {} and fcn.final_map is None
    assert (
        panels.final_panel(cmp, click, fcn).shape
        == panels.final_panel(cmp, click, click.heads[0]).shape
    )
    # DA's channel matrix is drawn once per image, its strongest channels marked.
    steps = panels.step_panels(cmp, click, click.heads[1])
    assert [title for _, title in steps] == [
        "Position attention",
        "Channel attention",
    ]
    text = panels.step_captions(cmp, click.heads[1])
    assert (
        "**Channel attention** (one per image)" in text and "does not depend on the query" in text
    )
    marked = click.heads[1].values["query_channels"].tolist()
    assert marked and f"(marked): {', '.join(map(str, marked))}" in text


def test_the_shared_scale_tops_at_the_largest_final_map(cmp):
    cmp.load_example("u", 2, "as drawn", ["isa", "nl"])
    click = cmp.click("u", 50, 50)
    lo, hi = click.scale()
    top = max(float(h.maps[h.final_map].max()) for h in click.heads)
    assert hi == pytest.approx(np.log10(top)) and hi - lo == pytest.approx(3.0)


def test_uploads_have_no_true_class_and_bad_requests_say_what_to_do(cmp, tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    cmp.load_image("v", rgb, ["nl", "gc"])
    click = cmp.click("v", 10, 10)
    assert "share_true" not in click.heads[0].statistics
    for names, message in (
        (["isa"], "choose 2 to 4 heads"),
        (["isa", "nl", "cc", "da", "gc"], "choose 2 to 4 heads"),
        (["isa", "isa"], "each head once"),
        (["isa", "transformer"], "unknown head 'transformer': choose from"),
        (7, "heads must be a list of names"),
        ('["isa", "nl"', "is not a JSON list"),
    ):
        with pytest.raises(ExplorerError, match=message):
            cmp.choose("v", names)
    for x, y, message in ((160, 5, "outside the 160x96 image"), (2.5, 5, "whole numbers")):
        with pytest.raises(ExplorerError, match=message):
            cmp.click("v", x, y)
    with pytest.raises(ExplorerError, match="no image loaded yet"):
        cmp.click("never-loaded", 1, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ExplorerError, match="not an image"):
        cmp.load_file("v", bad, ["nl", "gc"])


def test_costs_and_image_means_fill_in_and_the_download_holds_the_click(cmp, tmp_path):
    cmp.load_example("w", 1, "blue cue", ["isa", "cc"])
    cmp.measure_costs("w")
    cmp.image_averages("w")
    click = cmp.click("w", 40, 100)
    for head in click.heads:
        cost = click.state.costs[head.name]
        assert cost["status"] == "ok" and cost["ms"] > 0 and cost["runs"] >= 1
        averages = click.state.averages[head.name]
        assert averages.complete and averages.total == 16 * 32
        text = panels.statistics_markdown(click.state, head)
        assert "being" not in text and f"over {averages.total} of {averages.total}" in text
    npz, meta = panels.download(cmp, click, tmp_path)
    with np.load(npz) as saved:
        assert set(saved) == {
            "isa/long",
            "isa/short",
            "isa/combined",
            "cc/first",
            "cc/second",
            "cc/combined",
        }
        assert np.allclose(saved["isa/combined"], click.heads[0].maps["combined"].numpy())
    info = json.loads(Path(meta).read_text())
    assert info["query"] == [40, 100] and [h["name"] for h in info["heads"]] == ["isa", "cc"]
    assert info["heads"][0]["statistics"] == {
        k: round(v, 6) for k, v in click.heads[0].statistics.items()
    }
    assert "maps" not in info["heads"][0]  # the maps are in the .npz
    assert info["heads"][1]["image_statistics"]["complete"] is True


def test_a_spent_cost_budget_measures_one_head_and_says_so_for_the_others(cmp):
    cmp.load_example("x", 4, "as drawn", ["isa", "nl", "gc"])
    costs = cmp.measure_costs("x", budget_s=0.0).costs
    assert costs["isa"]["status"] == "ok"
    assert costs["nl"] == {"status": "skipped", "reason": "time budget 0 s"} == costs["gc"]
    text = panels.statistics_markdown(cmp.state("x"), cmp.click("x", 3, 3).heads[1])
    assert "not measured (time budget 0 s)" in text


def test_a_new_image_is_not_overwritten_by_the_last_ones_late_results(cmp):
    old = cmp.load_example("y", 1, "as drawn", ["isa", "nl"])
    cmp.load_example("y", 2, "as drawn", ["isa", "nl"])
    stale = cmp._merge("y", old, "costs", {"isa": {"status": "ok"}})
    assert (
        stale.costs and not cmp.state("y").costs and cmp.state("y").source.startswith("example 2")
    )


def test_a_model_that_cannot_be_opened_is_left_out_with_a_warning(tmp_path, caplog):
    from isa_explorer.pretrained import DEFAULT_MODELS_DIR

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cmp = Comparison({"isa": DEFAULT_MODELS_DIR / "isa", "broken": broken, "gone": tmp_path / "x"})
    assert cmp.names == ["isa"]
    assert "leaves out broken" in caplog.text and "leaves out gone" in caplog.text


def test_the_offer_adds_cached_zoo_models_and_a_checkpoint(tmp_path, monkeypatch):
    from conftest import small_isanet

    from isa_explorer import zoo
    from isa_explorer.explorer.compare import available_models
    from isa_explorer.paths import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    name = next(iter(zoo.entries()))
    assert name not in available_models()  # nothing cached yet
    small_isanet().save_pretrained(zoo.model_dir(name))  # as the zoo leaves a converted model
    small_isanet(head="nl").save_pretrained(tmp_path / "my-run")
    offer = available_models(tmp_path / "my-run")
    assert offer[name] == name and offer["my-run"] == tmp_path / "my-run"
    assert list(offer)[:1] == ["isa"]


def test_a_click_during_a_slow_step_and_the_steps_result_both_stay(cmp):
    """A click stored while the costs are measured is kept, and so are the costs."""
    import threading

    cmp.load_example("z", 6, "as drawn", ["isa", "gc"])
    started, clicked = threading.Event(), threading.Event()
    forward = cmp.explorers["gc"].model.model.forward

    def slow_forward(*args, **kwargs):  # the click lands while gc's pass is being timed
        started.set()
        clicked.wait(30)
        return forward(*args, **kwargs)

    cmp.explorers["gc"].model.model.forward = slow_forward
    try:
        worker = threading.Thread(target=cmp.measure_costs, args=("z",))
        worker.start()
        assert started.wait(30)
        cmp.click("z", 200, 100)
        clicked.set()
        worker.join(60)
    finally:
        del cmp.explorers["gc"].model.model.forward
    state = cmp.state("z")
    assert state.query == (200, 100) and set(state.costs) == {"isa", "gc"}


def test_a_click_answers_for_the_state_it_is_given(cmp):
    """Another request choosing other heads meanwhile does not change what this one gets."""
    first = cmp.load_example("r", 7, "as drawn", ["isa", "nl"])
    cmp.choose("r", ["cc", "gc"])
    assert [h.name for h in cmp.click("r", 1, 1, first).heads] == ["isa", "nl"]
    assert [h.name for h in cmp.click("r", 1, 1).heads] == ["cc", "gc"]


def test_a_head_whose_pass_fails_is_reported_and_the_others_measured(cmp):
    cmp.load_example("f", 8, "as drawn", ["isa", "nl"])

    def broken(*_args, **_kwargs):
        raise RuntimeError("out of memory (simulated)")

    cmp.explorers["isa"].model.model.forward = broken
    try:
        costs = cmp.measure_costs("f").costs
    finally:
        del cmp.explorers["isa"].model.model.forward
    assert costs["isa"] == {"status": "failed", "reason": "RuntimeError: out of memory (simulated)"}
    assert costs["nl"]["status"] == "ok"
    assert "not measured (RuntimeError" in panels.statistics_markdown(
        cmp.state("f"), cmp.click("f", 2, 2).heads[0]
    )


def test_the_api_checks_the_pixel_first_and_reuses_every_analysis(cmp, forwards):
    from isa_explorer.explorer.api import compare_summary

    rgb = np.random.default_rng(3).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    with pytest.raises(ExplorerError, match=r"pixel \(x=96, y=5\) is outside the 96x64 image"):
        compare_summary(cmp, rgb, 96, 5, ["isa", "nl"])
    assert forwards == {}  # refused before any forward pass
    compare_summary(cmp, rgb, 5, 5, ["isa", "nl"])
    compare_summary(cmp, rgb, 5, 5, "cc, da")
    out = compare_summary(cmp, rgb.copy(), 6, 6, '["da", "isa"]', image_means=True)
    assert forwards == {"isa": 1, "nl": 1, "cc": 1, "da": 1}  # the same pixels: run once each
    assert [h["name"] for h in out["heads"]] == ["da", "isa"]
    assert all(h["image_statistics"]["complete"] and h["cost"] is None for h in out["heads"])
    out = compare_summary(cmp, rgb, 6, 6, ["nl", "isa"], costs=True)
    assert [h["cost"]["status"] for h in out["heads"]] == ["ok", "ok"]
    assert out["heads"][1]["image_statistics"]["complete"]  # kept from the call before
