"""Notebook 2's view: analytic memory and FLOPs of the attention heads, by slider."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from isa_explorer.costs.analytic import analytic_costs, modules
from isa_explorer.explorer.widgets.base import _View, _widgets, new_figure
from isa_explorer.heads.isa import ISADecoder, auto_group
from isa_explorer.heads.protocol import HeadConfig

STYLES, MARKERS = ("-", "--", ":", "-."), "os^D"


class CostView(_View):
    """Analytic memory and FLOPs of each attention head with a cost (its explicit module:
    ISA, dense, NL, CC, DA, GC, EMA), with the committed measurements in each head's colour,
    and ISA's affinity size against its block side.

    Args:
        resolution: Input ``(H, W)`` (output stride 8: the map is ``H/8 x W/8``).
        channels: Value channels ``C`` (queries/keys: ``C / 2``).
        group: ISA block side.
        committed: The attention benchmark's report (``load_results()``), drawn as markers.
    """

    SIDES = np.arange(64, 4097, 64)

    def __init__(
        self,
        resolution: Sequence[int] = (512, 1024),
        channels: int = 512,
        group: int = 8,
        committed: dict | None = None,
    ):
        self.resolution, self.channels, self.group = tuple(resolution), channels, group
        self.committed = committed or {"results": []}
        self.fig, self.axes = new_figure(1, 3, (13, 3.8))
        self.controls = self._build_controls()
        self.update()

    def costs(self, resolution: Sequence[int] | None = None, group: int | None = None) -> dict:
        """``{head: cost}``: ``analytic_costs`` of each head's explicit module at a resolution
        (default: the current one)."""
        h, w = (v // 8 for v in (resolution or self.resolution))
        c = self.channels
        out = analytic_costs(h, w, group or self.group, channels=c, isa_channels=max(1, c // 2))
        known = modules()  # module -> (head, impl)
        return {known[m][0]: cost for m, cost in out.items() if known[m][1] == "explicit"}

    def optimum(self) -> int:
        """The block side that minimises the padded affinity of the current map."""
        h, w = (v // 8 for v in self.resolution)
        return auto_group(h, w)

    def set(self, **changes: Any) -> dict:
        """Change ``resolution``, ``channels`` or ``group`` (the sliders follow) and redraw."""
        for key, value in changes.items():
            if key not in ("resolution", "channels", "group"):
                raise ValueError(f"unknown setting {key!r}")
            setattr(self, key, tuple(value) if key == "resolution" else int(value))
        values = (*self.resolution, self.channels, self.group)
        with self._quiet():
            for control, value in zip(self.controls, values, strict=False):
                control.value = value
        return self.update()

    def update(self) -> dict:
        ax_mem, ax_flops, ax_group = self.axes
        for ax in self.axes:
            ax.clear()
        aspect = self.resolution[1] / self.resolution[0]
        heights = [int(s) for s in self.SIDES]
        curves = [self.costs((hh, max(8, int(hh * aspect)))) for hh in heights]
        colors = {}  # head -> its curves' colour, for its measured markers
        for i, head in enumerate(curves[0]):
            n = [c[head]["positions"] for c in curves]
            mem = [c[head]["predicted_peak_bytes"]["forward"] / 2**20 for c in curves]
            flops = [c[head]["flops"]["forward"] / 1e9 for c in curves]
            label = f"{head} ({self.group}x{self.group})" if curves[0][head]["group"] else head
            (line,) = ax_mem.loglog(n, mem, STYLES[i % 4], label=f"{label}, analytic")
            colors[head] = line.get_color()
            ax_flops.loglog(n, flops, STYLES[i % 4], label=label, color=colors[head])
        for i, head in enumerate(curves[0]):
            module, marker = f"{head}-explicit", MARKERS[i % 4]
            rows = [
                r for r in self.committed.get("results", [])
                if r.get("module") == module and r.get("pass") == "forward"
                and r.get("status") == "ok" and r.get("group") in (8, None)
            ]  # fmt: skip
            if rows:
                ax_mem.loglog(
                    [r["positions"] for r in rows], [r["peak_mib"] for r in rows], marker,
                    color=colors[head], label=f"{module}, measured (committed)",
                )  # fmt: skip
        now = self.costs()
        for ax, key in ((ax_mem, "mem"), (ax_flops, "flops")):
            for c in now.values():
                y = c["predicted_peak_bytes"]["forward"] / 2**20 if key == "mem" else (
                    c["flops"]["forward"] / 1e9
                )  # fmt: skip
                ax.plot(c["positions"], y, "k*", ms=10)
            ax.set_xlabel("feature positions N")
            ax.legend(fontsize=7)
        ax_mem.set_title(f"peak memory (MiB), C = {self.channels}", fontsize=9)
        ax_flops.set_title("forward GFLOPs (star: the chosen resolution)", fontsize=9)
        sides = np.arange(1, 33)
        fh, fw = (v // 8 for v in self.resolution)
        entries = [
            ISADecoder.cost(fh, fw, HeadConfig(1, 1, down_factor=(s, s))).affinity_elements
            for s in range(1, 33)
        ]  # ISA's affinity size against its block side
        best = self.optimum()
        ax_group.semilogy(sides, entries)
        ax_group.plot(best, entries[best - 1], "o", label=f"optimum {best}x{best}")
        ax_group.axvline(self.group, color="grey", lw=1, label=f"chosen {self.group}")
        ax_group.set_xlabel("block side")
        h, w = self.resolution
        ax_group.set_title(f"ISA affinity entries at {h}x{w} (map {h // 8}x{w // 8})", fontsize=9)
        ax_group.legend(fontsize=7)
        self.fig.canvas.draw_idle()
        return now

    def _build_controls(self) -> list:
        try:
            w = _widgets()
        except ImportError:
            return []
        height = w.IntSlider(self.resolution[0], 128, 2048, step=8, description="input H")
        width = w.IntSlider(self.resolution[1], 128, 4096, step=8, description="input W")
        channels = w.IntSlider(self.channels, 64, 1024, step=64, description="channels")
        group = w.IntSlider(self.group, 2, 32, description="block side")

        def on_change(_):
            if not self._syncing:
                self.set(resolution=(height.value, width.value), channels=channels.value,
                         group=group.value)  # fmt: skip

        for control in (height, width, channels, group):
            control.observe(on_change, "value")
        return [height, width, channels, group]
