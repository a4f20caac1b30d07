"""Figure of ``isa-explorer bench decoder``: peak memory and median time against positions.

Two log-log panels, one line per path with markers: each head one colour pair of the attention
benchmark's figure (:data:`isa_explorer.costs.plot.PAIRS`: ``explicit`` dark, ``fused``
light), a checkpointed path dotted with square markers. Peaks under the measurement's resolution are not
drawn (:func:`~isa_explorer.costs.plot.measured_peak`); a note counts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from isa_explorer.costs.plot import MIN_PEAK_MIB, PAIRS, log_axes, measured_peak

#: The title of each mode.
TITLES = {"infer": "forward (fused for inference)", "train": "training step (fwd + bwd)"}


def _style(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{path: plot keywords}``: colour by head and implementation, line by checkpointing."""
    heads = list(dict.fromkeys(r["head"] for r in results))
    out = {}
    for r in results:
        dark, light = PAIRS[heads.index(r["head"]) % len(PAIRS)]
        checkpoint = bool(r.get("checkpoint"))
        out[r["path"]] = dict(
            color=light if r.get("impl") == "fused" else dark,
            marker="s" if checkpoint else "o",
            ls=":" if checkpoint else "-",
            label=r["path"],
        )
    return out


def plot_decoder(report: dict[str, Any], path: str | Path | None = None) -> Figure:
    """Plot a report of :func:`~isa_explorer.bench.decoder.run`.

    Args:
        report: The report (its ``results`` and ``mode``).
        path: A file to save (format from the suffix: ``.png``, ``.svg``), or ``None``.

    Returns:
        The figure.
    """
    results = list(report["results"])
    fig = Figure(figsize=(12, 5.4), layout="constrained")  # no pyplot: no global state
    ax_mem, ax_time = fig.subplots(1, 2)
    not_drawn = 0
    for name, style in _style(results).items():
        ok = sorted(
            (r for r in results if r["path"] == name and r.get("status") == "ok"),
            key=lambda r: r["positions"],
        )
        peaks = [(r["positions"], measured_peak(r)) for r in ok]
        drawn = [(n, mib) for n, mib in peaks if mib is not None]
        not_drawn += len(peaks) - len(drawn)
        if drawn:
            ax_mem.plot(*zip(*drawn, strict=True), **style)
        if ok:
            ax_time.plot([r["positions"] for r in ok], [r["median_ms"] for r in ok], **style)
    _layout(ax_mem, ax_time, results)
    if not_drawn:
        note = f"{not_drawn} peak(s) under {MIN_PEAK_MIB:g} MiB: not measured, not drawn"
        ax_mem.text(0.98, 0.02, note, transform=ax_mem.transAxes, ha="right", fontsize=8)
    mode = report.get("mode", "infer")
    fig.suptitle(f"Whole decoder of each head: {TITLES.get(mode, mode)}")
    handles, labels = ax_time.get_legend_handles_labels()
    if handles:  # below both plots: the curves keep the whole axes
        ncol = len(handles) if len(handles) <= 7 else (len(handles) + 1) // 2
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def _layout(ax_mem: Axes, ax_time: Axes, results: list[dict[str, Any]]) -> None:
    """Log-log axes with the feature sizes as ticks, and short titles."""
    ticks = sorted({(r["positions"], tuple(r["size"])) for r in results})
    log_axes(ax_mem, ax_time, ticks, "feature map (positions N = h * w)")
