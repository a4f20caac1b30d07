"""Log-log figure of peak memory and time against resolution, one line per module and pass."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

#: Colour pairs (dark, light) of matplotlib's ``tab20``, one pair per head in the order heads
#: first appear in the results: a head's explicit path dark, its fused path light.
PAIRS = tuple(zip(colormaps["tab20"].colors[::2], colormaps["tab20"].colors[1::2], strict=True))
STYLES = {"forward": ("o", "-"), "forward+backward": ("s", ":")}
#: Peaks are recorded to 0.1 MiB: a smaller one (0.0) was not measured and is never drawn.
MIN_PEAK_MIB = 0.1


def measured_peak(result: dict[str, Any], min_peak_mib: float = MIN_PEAK_MIB) -> float | None:
    """The peak memory of a case in MiB, or ``None`` if it was not measured or is too small.

    Args:
        result: One result dict of a benchmark run.
        min_peak_mib: Resolution of the measurement: smaller peaks (0 included) say nothing.
    """
    peak = result.get("peak_mib")
    if result.get("status") != "ok" or peak is None or peak < max(min_peak_mib, 1e-9):
        return None
    return float(peak)


def module_colors(names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``{module: colour}`` for module names ``HEAD-IMPL``: one :data:`PAIRS` pair per head
    (cycling after ten heads), the dark shade for ``explicit``, the light one for ``fused``."""
    heads = list(dict.fromkeys(name.rsplit("-", 1)[0] for name in names))
    out = {}
    for name in names:
        head, _, impl = name.rpartition("-")
        dark, light = PAIRS[heads.index(head or name) % len(PAIRS)]
        out[name] = light if impl == "fused" else dark
    return out


def plot_results(
    results: Sequence[dict[str, Any]] | dict[str, Any],
    path_or_ax: str | Path | Sequence[Axes] | None = None,
    passes: Sequence[str] = ("forward", "forward+backward"),
    min_peak_mib: float = MIN_PEAK_MIB,
) -> Figure:
    """Plot measured peak memory and time (markers) beside the analytic curves (dashed).

    Memory curves are the analytic peak model (activations plus materialised affinities);
    time curves are the analytic FLOPs times the module's median measured seconds per FLOP.
    The x axis is the number of feature positions, labelled with the input resolution. Each
    module has its colour (:func:`module_colors`), each pass its marker and line style; the
    legend names them once each.

    Args:
        results: Result dicts of :func:`~isa_explorer.costs.cases.run_cases`, or a report
            from :func:`~isa_explorer.costs.cases.load_results`.
        path_or_ax: A file to save (format from the suffix: ``.png``, ``.svg``, ...), two
            Axes ``(memory, time)`` to draw into, or ``None``.
        passes: Which passes to draw.
        min_peak_mib: Peaks below this (the measurement's resolution) are left out of the
            memory plot, never drawn at a floor; a note in the plot counts them.

    Returns:
        The figure.
    """
    rows = list(results["results"] if isinstance(results, dict) else results)
    own_figure = isinstance(path_or_ax, str | Path) or path_or_ax is None
    if own_figure:
        fig = Figure(figsize=(12, 5.4), layout="constrained")  # no pyplot: no global state
        axes = fig.subplots(1, 2)
    else:
        axes = list(path_or_ax)
        if len(axes) != 2:
            raise ValueError("path_or_ax: give a file path or two Axes (memory, time)")
        fig = axes[0].figure
    ax_mem, ax_time = axes
    not_drawn = 0
    colors = module_colors(list(dict.fromkeys(r["module"] for r in rows)))
    for module, color in colors.items():
        for p in passes:
            cases = sorted(
                (r for r in rows if r["module"] == module and r["pass"] == p),
                key=lambda r: r["positions"],
            )
            if not cases:
                continue
            marker, line = STYLES[p]
            style = dict(marker=marker, ls=line, color=color)
            n_all = [r["positions"] for r in cases]
            predicted_mib = [r["analytic"]["predicted_peak_mib"] for r in cases]
            ax_mem.plot(n_all, predicted_mib, "--", color=color, alpha=0.45, lw=1)
            ok = [r for r in cases if r.get("status") == "ok"]
            if not ok:
                continue
            peaks = [(r["positions"], measured_peak(r, min_peak_mib)) for r in ok]
            drawn = [(n, mib) for n, mib in peaks if mib is not None]
            not_drawn += len(peaks) - len(drawn)
            if drawn:
                ax_mem.plot(*zip(*drawn, strict=True), **style)
            rate = statistics.median(r["median_ms"] / r["flops"] for r in ok)
            predicted_ms = [r["analytic"]["flops"] * rate for r in cases]
            ax_time.plot(n_all, predicted_ms, "--", color=color, alpha=0.45, lw=1)
            ax_time.plot([r["positions"] for r in ok], [r["median_ms"] for r in ok], **style)
    _axes_layout(ax_mem, ax_time, rows)
    if not_drawn:
        note = f"{not_drawn} peak(s) under {min_peak_mib:g} MiB: not measured, not drawn"
        ax_mem.text(0.98, 0.02, note, transform=ax_mem.transAxes, ha="right", fontsize=8)
    drawn_passes = [p for p in passes if any(r["pass"] == p for r in rows)]
    handles = [Line2D([], [], color=c, lw=3, label=m) for m, c in colors.items()]
    handles += [
        Line2D([], [], color="0.35", marker=STYLES[p][0], ls=STYLES[p][1], label=f"{p}, measured")
        for p in drawn_passes
    ]
    handles.append(Line2D([], [], color="0.35", ls="--", alpha=0.6, label="analytic (dashed)"))
    if own_figure:  # below both plots: the curves keep the whole axes
        ncol = len(handles) if len(handles) <= 7 else (len(handles) + 1) // 2
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8)
    else:
        ax_time.legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    if isinstance(path_or_ax, str | Path):
        Path(path_or_ax).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path_or_ax, dpi=120)
    return fig


def _axes_layout(ax_mem: Axes, ax_time: Axes, rows: list[dict[str, Any]]) -> None:
    """Log-log axes with the input resolutions as ticks, and short titles."""
    ticks = sorted({(r["positions"], tuple(r["resolution"])) for r in rows})
    log_axes(ax_mem, ax_time, ticks, "input resolution (feature positions at 1/8)")
    ax_time.set_title("Time per pass")


def log_axes(
    ax_mem: Axes, ax_time: Axes, ticks: list[tuple[int, tuple[int, int]]], xlabel: str
) -> None:
    """The memory and time panels of a benchmark figure: log-log, ``ticks`` as
    ``(positions, (h, w))`` labelled with the size and its positions, a light major grid."""
    for ax, ylabel in ((ax_mem, "peak memory growth (MiB)"), (ax_time, "median time (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([n for n, _ in ticks], [f"{h}x{w}\n{n} pos." for n, (h, w) in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_mem.set_title("Peak memory")
    ax_time.set_title("Median time")
