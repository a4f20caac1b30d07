"""Notebook 1's view: the interlaced grouping of a map and the support of ``C = S @ L``."""

from __future__ import annotations

from typing import Any

import numpy as np

from isa_explorer.explorer.widgets.base import _View, _widgets, new_figure
from isa_explorer.heads.grid import GroupGrid


class GroupingView(_View):
    """The interlaced grouping of an ``h x w`` map: pick a position, see its two groups.

    Args:
        h, w: Feature map size.
        group: Block side (``down_factor = (group, group)``).
        order: ``"long-short"`` or ``"short-long"``.
        query: Initial position ``(fx, fy)``.
    """

    def __init__(
        self, h: int = 12, w: int = 18, group: int = 4, order: str = "long-short", query=(5, 4)
    ):
        self.h, self.w, self.group, self.order = h, w, group, order
        self.query = tuple(query)
        self.fig, (self.ax_grid, self.ax_reach) = new_figure(1, 2, (11, 4.2))
        self.fig.canvas.mpl_connect("button_press_event", self.on_click)
        self.controls = self._build_controls()
        self.update()

    @property
    def grid(self) -> GroupGrid:
        return GroupGrid.of(self.h, self.w, (self.group, self.group))

    def support(self) -> np.ndarray:
        """``(Np, Np)`` boolean support of the combined affinity ``C`` over the padded grid:
        ``S @ L`` for long-short (``L @ S`` for short-long), ``S``/``L`` the block-diagonal
        masks of the short- and long-range groups."""
        g = self.grid
        long_ids, short_ids = (g.group_ids(s).numpy() for s in ("long", "short"))
        L = (long_ids[:, None] == long_ids[None, :]).astype(np.int64)  # noqa: N806
        S = (short_ids[:, None] == short_ids[None, :]).astype(np.int64)  # noqa: N806
        C = S @ L if self.order == "long-short" else L @ S  # noqa: N806
        return C > 0

    def set(self, **changes: Any) -> np.ndarray:
        """Change ``h``, ``w``, ``group``, ``order`` or ``query`` (as the sliders do) and redraw;
        returns :meth:`support`."""
        for key, value in changes.items():
            if key not in ("h", "w", "group", "order", "query"):
                raise ValueError(f"unknown setting {key!r}")
            setattr(self, key, tuple(value) if key == "query" else value)
        self.query = (min(self.query[0], self.w - 1), min(self.query[1], self.h - 1))
        with self._quiet():
            for control, value in zip(self.controls, (self.h, self.w, self.group, self.order),
                                      strict=False):  # fmt: skip
                control.value = value
        return self.update()

    def update(self) -> np.ndarray:
        g = self.grid
        hp, wp = g.padded
        fx, fy = self.query
        bi, bj, li, lj = g.locate(fx, fy)
        picture = np.full((hp, wp, 3), 0.93)  # padded positions: light grey
        picture[g.pad_top : g.pad_top + g.h, g.pad_left : g.pad_left + g.w] = 1.0
        picture[li :: g.lh, lj :: g.lw] = (0.55, 0.75, 1.0)  # the long-range group
        block = (slice(bi * g.lh, (bi + 1) * g.lh), slice(bj * g.lw, (bj + 1) * g.lw))
        picture[block] = picture[block] * (1.0, 0.8, 0.6)  # the short-range block
        py, px = fy + g.pad_top, fx + g.pad_left
        picture[py, px] = (0.85, 0.1, 0.1)
        support = self.support()
        row = support[py * wp + px].reshape(hp, wp)
        for ax in (self.ax_grid, self.ax_reach):
            ax.clear()
            ax.set_xticks(np.arange(-0.5, wp, g.lw), [])
            ax.set_yticks(np.arange(-0.5, hp, g.lh), [])
            ax.grid(True, color="black", lw=1)
        self.ax_grid.imshow(picture, interpolation="nearest")
        self.ax_grid.set_title(
            f"{self.h}x{self.w} map, {g.lh}x{g.lw} blocks (padded {hp}x{wp}): position "
            f"({fx}, {fy}) in red,\nits long-range group blue, its short-range block orange",
            fontsize=9,
        )
        self.ax_reach.imshow(row, cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
        reached = int(row.sum())
        self.ax_reach.set_title(
            f"support of C = {'S @ L' if self.order == 'long-short' else 'L @ S'} from that "
            f"position:\nreaches {reached} of {hp * wp} positions"
            + (" (all)" if support.all() else " (NOT all)"),
            fontsize=9,
        )
        self.fig.canvas.draw_idle()
        return support

    def on_click(self, event: Any) -> None:
        """A click on the grid picks the position under it."""
        if event.inaxes is not self.ax_grid or event.xdata is None:
            return
        g = self.grid
        fx, fy = int(round(event.xdata)) - g.pad_left, int(round(event.ydata)) - g.pad_top
        if 0 <= fx < self.w and 0 <= fy < self.h:
            self.set(query=(fx, fy))

    def _build_controls(self) -> list:
        try:
            w = _widgets()
        except ImportError:
            return []
        sliders = {
            "h": w.IntSlider(self.h, 2, 32, description="map h"),
            "w": w.IntSlider(self.w, 2, 32, description="map w"),
            "group": w.IntSlider(self.group, 1, 8, description="block side"),
            "order": w.Dropdown(options=["long-short", "short-long"], value=self.order),
        }

        def on_change(key: str, value: Any) -> None:
            if not self._syncing:
                self.set(**{key: value})

        for key, slider in sliders.items():
            slider.observe(lambda change, key=key: on_change(key, change["new"]), "value")
        return list(sliders.values())
