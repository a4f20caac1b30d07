"""Log-log figure of peak memory and time against resolution, one colour per module."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

COLORS = {
    "isa-explicit": "tab:blue",
    "isa-fused": "tab:cyan",
    "dense-explicit": "tab:red",
    "dense-fused": "tab:orange",
}
STYLES = {"forward": ("o", "-"), "forward+backward": ("s", ":")}


def _results(results: Sequence[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
    return list(results["results"] if isinstance(results, dict) else results)


def plot_results(
    results: Sequence[dict[str, Any]] | dict[str, Any],
    path_or_ax: str | Path | Sequence[Axes] | None = None,
    passes: Sequence[str] = ("forward", "forward+backward"),
) -> Figure:
    """Plot measured peak memory and time (markers) beside the analytic curves (dashed).

    Memory curves are the analytic peak model (activations plus materialised affinities);
    time curves are the analytic FLOPs times the module's median measured seconds per FLOP.
    The x axis is the number of feature positions, labelled with the input resolution.

    Args:
        results: Result dicts of :func:`isa_explorer.benchmark.run_benchmark`, or a report
            from :func:`isa_explorer.benchmark.load_results`.
        path_or_ax: A file to save (format from the suffix: ``.png``, ``.svg``, ...), two
            Axes ``(memory, time)`` to draw into, or ``None``.
        passes: Which passes to draw.

    Returns:
        The figure.
    """
    rows = _results(results)
    if isinstance(path_or_ax, str | Path) or path_or_ax is None:
        fig = Figure(figsize=(12, 4.8), layout="constrained")  # no pyplot: no global state
        axes = fig.subplots(1, 2)
    else:
        axes = list(path_or_ax)
        if len(axes) != 2:
            raise ValueError("path_or_ax: give a file path or two Axes (memory, time)")
        fig = axes[0].figure
    ax_mem, ax_time = axes
    for module, color in COLORS.items():
        for p in passes:
            cases = sorted(
                (r for r in rows if r["module"] == module and r["pass"] == p),
                key=lambda r: r["positions"],
            )
            if not cases:
                continue
            marker, line = STYLES[p]
            label = f"{module} {'fwd' if p == 'forward' else 'fwd+bwd'}"
            n_all = [r["positions"] for r in cases]
            ax_mem.plot(
                n_all,
                [r["analytic"]["predicted_peak_mib"] for r in cases],
                "--",
                color=color,
                alpha=0.45,
                lw=1,
            )
            ok = [r for r in cases if r.get("status") == "ok"]
            if not ok:
                continue
            n_ok = [r["positions"] for r in ok]
            ax_mem.plot(
                n_ok,
                [max(r["peak_mib"], 0.1) for r in ok],
                marker=marker,
                ls=line,
                color=color,
                label=label,
            )
            rate = statistics.median(r["median_ms"] / r["flops"] for r in ok)
            ax_time.plot(
                n_all,
                [r["analytic"]["flops"] * rate for r in cases],
                "--",
                color=color,
                alpha=0.45,
                lw=1,
            )
            ax_time.plot(
                n_ok, [r["median_ms"] for r in ok], marker=marker, ls=line, color=color, label=label
            )
    ticks = sorted({(r["positions"], tuple(r["resolution"])) for r in rows})
    for ax, ylabel in ((ax_mem, "peak memory growth (MiB)"), (ax_time, "median time (ms)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([n for n, _ in ticks], [f"{h}x{w}\n{n} pos." for n, (h, w) in ticks])
        ax.minorticks_off()
        ax.set_xlabel("input resolution (feature positions at 1/8)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax_mem.set_title("Peak memory: measured (markers), analytic model (dashed)")
    ax_time.set_title("Time: measured (markers), analytic FLOPs x measured rate (dashed)")
    ax_time.legend(fontsize=8, loc="upper left")
    if isinstance(path_or_ax, str | Path):
        Path(path_or_ax).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path_or_ax, dpi=120)
    return fig
