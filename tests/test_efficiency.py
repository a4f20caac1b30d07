"""The Efficiency tab: committed results, the live run's promise, unmeasured peaks, figures."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from isa_explorer.costs import cases, plot
from isa_explorer.costs.analytic import modules
from isa_explorer.explorer import efficiency

SMALL = dict(channels=32, isa_channels=16)
MODULES = list(modules())
LIVE = efficiency.live_modules()


def _promised_sizes(text: str) -> set[tuple[int, int]]:
    return {(int(h), int(w)) for h, w in re.findall(r"(\d+)x(\d+)", text)}


def _rows(table: str) -> list[list[str]]:
    """The body rows of a results table, split into cells."""
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def _case(module: str, size: tuple[int, int], peak_mib: float, ms: float = 10.0) -> dict:
    """A result record as the benchmark writes it (feature map at 1/8)."""
    h, w = size[0] // 8, size[1] // 8
    return {
        "module": module,
        "pass": "forward",
        "resolution": list(size),
        "feature": [h, w],
        "positions": h * w,
        "status": "ok",
        "runs": 1,
        "warmup": 0,
        "median_ms": ms,
        "peak_mib": peak_mib,
        "flops": 1e9 * h * w,
        "analytic": {"flops": 1e9 * h * w, "predicted_peak_mib": 0.01 * h * w},
    }


def _drawn_peaks(fig) -> list[float]:
    """Every measured point (a line with markers) of the memory axes."""
    return [
        y for line in fig.axes[0].lines if line.get_marker() != "None" for y in line.get_ydata()
    ]


def test_committed_results_missing_say_how_to_make_them(tmp_path):
    with pytest.raises(efficiency.EfficiencyUnavailable, match="isa-explorer bench attention"):
        efficiency.committed_report(tmp_path / "none.json")


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_live_run_and_report_round_trip(tmp_path):
    fig, text = efficiency.live_run(resolutions=((64, 128), (128, 256)), **SMALL)
    assert len(_rows(text)) == 2 * len(LIVE)
    assert len(fig.axes) == 2
    # A live run with a budget of zero seconds stops after its smallest resolution.
    _, text = efficiency.live_run(resolutions=((128, 256), (64, 128)), budget_seconds=0, **SMALL)
    assert "not started" in text and "128x256" in text.split("not started")[1]
    assert {row[2] for row in _rows(text)} == {"64x128"}
    results = cases.run_cases([(64, 128)], ["isa-fused"], ["forward"], **SMALL, runs=1)
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"system": {"cpu": "test"}, "config": {}, "results": results}))
    fig, text = efficiency.committed_report(path)
    assert "report.json" in text and "| isa-fused | fwd | 64x128 | ok | 1 + 1 |" in text


def test_only_one_live_benchmark_runs_at_a_time():
    assert efficiency._live_lock.acquire(blocking=False)
    try:
        with pytest.raises(efficiency.EfficiencyUnavailable, match="already running"):
            efficiency.live_run(resolutions=((64, 128),))
    finally:
        efficiency._live_lock.release()


def test_the_live_run_measures_every_head_once():
    """One module per head with a cost, its explicit path: every head, no head twice."""
    heads = [m.rsplit("-", 1)[0] for m in LIVE]
    assert sorted(heads) == sorted({head for head, _ in modules().values()})
    assert len(heads) == len(set(heads)) and all(m.endswith("-explicit") for m in LIVE)
    assert {"isa-explicit", "dense-explicit", "nl-explicit", "ema-explicit"} <= set(LIVE)


def test_the_live_buttons_promise_is_what_the_live_run_runs(monkeypatch):
    """Every input the button names runs for every live module, with the planned repeats; the
    measurement is stubbed, the benchmark's own skip rules are not."""
    text = efficiency.live_button_text()
    promised = _promised_sizes(text)
    assert promised == set(efficiency.LIVE_RESOLUTIONS) and (512, 1024) in promised
    seconds = int(re.search(r"about (\d+) s", text).group(1))
    plan = efficiency.live_plan()
    estimate = sum(c["estimate_s"] * (c["runs"] + c["warmup"]) for c in plan)
    assert abs(seconds - estimate) <= 5 and estimate < efficiency.LIVE_BUDGET_SECONDS / 2
    measured = []

    def fake_measure(module, size, passes, runs, warmup, **_):
        measured.append((module, (size[0] * 8, size[1] * 8), runs, warmup))
        return {"median_ms": 1.0, "times_ms": [1.0] * runs, "peak_mib": 0.0, "status": "ok"}

    monkeypatch.setattr(cases, "measure_case", fake_measure)
    _, table = efficiency.live_run()
    want = {(c["module"], c["resolution"], c["runs"], c["warmup"]) for c in plan}
    assert set(measured) == want and len(measured) == len(promised) * len(LIVE)
    rows = _rows(table)
    assert len(rows) == len(want) and all(row[3] == "ok" for row in rows), table
    assert "not started" not in table and "skipped" not in table
    assert {(1, 0), (2, 1)} == {(c["runs"], c["warmup"]) for c in plan}  # long cases run once


@pytest.mark.slow
def test_a_real_live_run_measures_every_promised_case():
    promised = _promised_sizes(efficiency.live_button_text())
    _, table = efficiency.live_run()
    ok = {(row[0], row[2]) for row in _rows(table) if row[3] == "ok"}
    assert ok == {(m, f"{h}x{w}") for m in LIVE for h, w in promised}, table


def test_unmeasured_peaks_are_neither_drawn_nor_shown_as_zero():
    results = [
        _case("isa-fused", (128, 256), 0.0),  # nothing measured
        _case("isa-fused", (256, 512), 0.4),  # below the live run's resolution
        _case("isa-fused", (512, 1024), 60.0),
        _case("dense-fused", (128, 256), 0.0),
        _case("dense-fused", (256, 512), 0.05),  # below the record's 0.1 MiB
    ]
    fig = plot.plot_results(results, passes=("forward",), min_peak_mib=1.0)
    assert _drawn_peaks(fig) == [60.0]
    assert "4 peak(s) under 1 MiB" in " ".join(t.get_text() for t in fig.axes[0].texts)
    assert sorted(_drawn_peaks(plot.plot_results(results, passes=("forward",)))) == [0.4, 60.0]
    # Time is measured for every case: all five are drawn.
    assert (
        sum(len(line.get_ydata()) for line in fig.axes[1].lines if line.get_marker() != "None") == 5
    )
    peaks = [row[-1] for row in _rows(efficiency.results_table(results, 1.0))]
    assert peaks == ["< 1 (not measured)"] * 2 + ["60.0"] + ["< 1 (not measured)"] * 2
    peaks = [row[-1] for row in _rows(efficiency.results_table(results))]
    assert peaks == ["< 0.1 (not measured)", "0.4", "60.0"] + ["< 0.1 (not measured)"] * 2


def test_the_live_run_plots_no_zero_peak(monkeypatch):
    def fake_measure(module, size, passes, runs, warmup, **_):
        peak = 0.0 if module.startswith("dense") else 30.0 * size[0]  # RSS did not grow
        return {"median_ms": 1.0, "times_ms": [1.0], "peak_mib": peak, "status": "ok"}

    monkeypatch.setattr(cases, "measure_case", fake_measure)
    fig, table = efficiency.live_run(resolutions=((64, 128), (128, 256)), **SMALL)
    drawn = _drawn_peaks(fig)
    assert len(drawn) == 2 * (len(LIVE) - 1) and min(drawn) >= efficiency.LIVE_MIN_PEAK_MIB
    assert "0.0" not in {row[-1] for row in _rows(table)}
    assert table.count("< 1 (not measured)") == 2  # dense-explicit at both sizes


@pytest.mark.parametrize("source", ["committed", "live"])
def test_plot_titles_legend_and_notes_fit_inside_the_figure(source):
    if source == "committed":
        fig = plot.plot_results(cases.load_results())
    else:
        sizes = ((128, 256), (256, 512), (512, 1024))
        rows = [_case(m, s, 0.0 if s[0] == 128 else 10.0) for m in MODULES for s in sizes]
        fig = plot.plot_results(rows, passes=("forward",), min_peak_mib=1.0)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    texts = [ax.title for ax in fig.axes] + [t for ax in fig.axes for t in ax.texts]
    items = texts + fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert fig.legends or any(ax.get_legend() for ax in fig.axes)
    for item in items:
        extent = item.get_window_extent(renderer)
        inside = box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1
        assert inside and box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, item


def test_the_app_reads_costs_without_the_benchmark_runner():
    """The app's tab and the cost view reach ``isa_explorer.costs``, never the runner of
    ``isa_explorer.bench`` (subprocess workers, the CLI); ``costs`` imports no app."""
    from test_layout import import_graph

    graph = import_graph()

    def reached(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            if (m := todo.pop()) not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    assert "isa_explorer.costs.cases" in reached("isa_explorer.explorer.app")
    for app in ("isa_explorer.explorer.app", "isa_explorer.explorer.widgets.cost_view"):
        assert not [m for m in reached(app) if m.startswith("isa_explorer.bench")], app
    costs = {m for m in graph if m.startswith(("isa_explorer.costs", "isa_explorer.bench"))}
    assert not [m for c in costs for m in reached(c) if m.startswith("isa_explorer.explorer")]
