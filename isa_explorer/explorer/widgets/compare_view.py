"""Notebook 7's view: one image, two to four heads, one click; their final maps on one scale.

The view draws what :class:`~isa_explorer.explorer.compare.Comparison` (the app's Compare tab)
computes: each chosen model runs once on the image, and a click reads every model's cached
record (no forward pass). One column per model: its final map (the head's ``main_map``) on
the log colour scale all columns share (:meth:`~isa_explorer.explorer.compare.CompareClick.scale`,
one colour bar), its prediction, and the statistics of its final map at the query
(:mod:`~isa_explorer.explorer.map_stats`), with the whole-image means once computed.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize

from isa_explorer.explorer import map_stats
from isa_explorer.explorer.compare import Comparison
from isa_explorer.explorer.compare_panels import fmt
from isa_explorer.explorer.compare_state import CompareClick, CompareState, HeadClick
from isa_explorer.explorer.service import CONTEXTS, NUM_EXAMPLES, ExplorerError
from isa_explorer.explorer.widgets import base
from isa_explorer.explorer.widgets.base import _View, _widgets, new_figure

#: The colour map of the final maps (the app's heat colours are matplotlib's ``inferno``).
CMAP = "inferno"
#: Width of a model's column, height of its statistics and of a title, in inches (at
#: ``base.LIVE_DPI``: four columns and the colour bar fit JupyterLab's output width).
COLUMN_IN, TEXT_IN, TITLE_IN = 2.9, 1.3, 0.35
_KEYS = itertools.count()  # each view its own session of the comparison


class CompareView(_View):
    """Click a pixel, see where two to four heads look from it, on one colour scale.

    Args:
        models: The model names to compare (2 to 4 of ``comparison.names``); default
            :meth:`Comparison.default_choice` (ISA, NL, CC and DA).
        comparison: The comparison to draw from (default: a new :class:`Comparison` of the
            embedded default models and the cached zoo models), or a :class:`Comparison`
            passed as ``models``.
        opacity: Opacity of the final maps over the image.
    """

    def __init__(
        self,
        models: list[str] | tuple[str, ...] | Comparison | None = None,
        comparison: Comparison | None = None,
        opacity: float = 0.8,
    ):
        if isinstance(models, Comparison):
            comparison, models = models, None
        self.comparison = comparison if comparison is not None else Comparison()
        chosen = self.comparison.default_choice() if models is None else list(models)
        self.names = self.comparison.check_names(chosen)
        self.opacity = opacity
        self.key = f"notebook-compare-{next(_KEYS)}"
        self.state: CompareState | None = None
        self.result: CompareClick | None = None
        self.norm = Normalize(-3.0, 0.0)  # shared by every final map and the colour bar
        self.fig = new_figure(1, 1, (COLUMN_IN, 2.0))[0]
        self.axes: dict[str, dict[str, Any]] = {}
        self._shape: tuple | None = None
        self.fig.canvas.mpl_connect("button_press_event", self.on_click)
        self.controls = self._build_controls()

    # -- layout ---------------------------------------------------------------------------
    def _layout(self) -> None:
        """Three rows (final map, prediction, statistics) of one column per model, and the
        colour bar; laid out again (same figure and canvas) when the models or the image's
        shape change."""
        h, w = self.state.size
        aspect = min(max(h / w, 0.3), 1.5)
        shape = (tuple(self.names), round(aspect, 3))
        if shape == self._shape:
            return
        self._shape, n = shape, len(self.names)
        self.fig.clear()
        panel_in = COLUMN_IN * aspect + TITLE_IN
        self.fig.set_size_inches(COLUMN_IN * n + 0.8, 2 * panel_in + TEXT_IN + TITLE_IN)
        if base.in_kernel():
            base.keep_toolbar_strip(self.fig)
        grid = np.atleast_2d(
            self.fig.subplots(3, n, height_ratios=(panel_in, panel_in, TEXT_IN))
        ).reshape(3, n)
        self.axes = {
            row: dict(zip(self.names, grid[i], strict=True))
            for i, row in enumerate(("final", "prediction", "text"))
        }
        for ax in grid.flat:
            ax.set_axis_off()
        self.norm = Normalize(-3.0, 0.0)  # a new one: the old colour bar is gone with its axes
        self.colorbar = self.fig.colorbar(
            ScalarMappable(self.norm, CMAP), ax=list(grid[0]), location="right", shrink=0.9
        )
        self.colorbar.set_label("log10 share of the query's attention per cell", fontsize=7)
        self.colorbar.ax.tick_params(labelsize=7)
        self.final_images: dict[str, Any] = {}
        self.texts: dict[str, Any] = {}
        self._markers: list[Any] = []

    def _draw_image(self) -> None:
        """The image under every final map and each model's prediction (once per image)."""
        self._layout()
        h, w = self.state.size
        extent = (0, w, h, 0)  # axes in image pixels: a click's xdata/ydata is the pixel
        self.final_images, self.texts, self._markers = {}, {}, []
        for name in self.names:
            analysis = self.state.analyses[name]
            palette = self.comparison.explorers[name].model.palette
            blend = 0.5 * self.state.rgb + 0.5 * palette[analysis.labels % len(palette)]
            under = self.state.rgb if analysis.cache is not None else 0.3 * self.state.rgb + 90
            for row, picture in (("final", under), ("prediction", blend)):
                ax = self.axes[row][name]
                ax.clear()
                ax.set_axis_off()
                ax.imshow(picture.astype(np.uint8), extent=extent)
                self._markers += ax.plot([], [], "*", color="cyan", ms=11, mec="k")
            self.axes["prediction"][name].set_title(f"{name}: prediction", fontsize=9)
            text = self.axes["text"][name]
            text.clear()
            text.set_axis_off()
            self.texts[name] = text.text(
                0.0, 1.0, "", va="top", ha="left", fontsize=6.5, transform=text.transAxes
            )
            self.texts[name].set_in_layout(False)  # its lines may run past the column's axes

    # -- images and models ----------------------------------------------------------------
    def load_example(self, index: int = 3, context: str = "as drawn") -> CompareState:
        """Analyse example scene ``index`` with every chosen model and draw it."""
        self.state = self.comparison.load_example(self.key, int(index), context, self.names)
        self._sync(scene=int(index), cue=context)
        return self._loaded()

    def load_image(self, image: Any, source: str = "image") -> CompareState:
        """Analyse an image (array, PIL image, or the path of a file) and draw it."""
        if isinstance(image, str | Path):
            self.state = self.comparison.load_file(self.key, image, self.names)
        else:
            self.state = self.comparison.load_image(self.key, image, self.names, source)
        return self._loaded()

    def choose(self, names: list[str] | tuple[str, ...]) -> CompareState | None:
        """Compare ``names`` (2 to 4 models): on the current image only the models new to it
        run and the query stays where it was; without an image, the next one loaded."""
        self.names = self.comparison.check_names(list(names))
        self._sync(heads=tuple(self.names))
        if self.state is None:
            return None
        query = self.state.query
        self.state = self.comparison.choose(self.key, self.names)
        self._draw_image()
        h, w = self.state.size
        self.select(*(query or (w // 2, h // 2)))
        return self.state

    def image_averages(self, budget_s: float | None = None) -> CompareState:
        """Average every statistic over the image's query cells, per model (bounded in time:
        :meth:`Comparison.image_averages`), and show the means beside the query's values."""
        if self.state is None:
            raise ValueError("load an image first: load_example() or load_image()")
        kwargs = {} if budget_s is None else {"budget_s": budget_s}
        self.state = self.comparison.image_averages(self.key, **kwargs)
        if self.result is not None:
            self.select(*self.result.query)
        return self.state

    def _loaded(self) -> CompareState:
        """Draw the new image; its centre pixel is the first query."""
        self.result = None
        self._draw_image()
        h, w = self.state.size
        self.select(w // 2, h // 2)
        return self.state

    # -- clicks ---------------------------------------------------------------------------
    def select(self, x: int, y: int) -> CompareClick:
        """Make image pixel ``(x, y)`` the query and redraw every column (no forward pass:
        :meth:`Comparison.click` reads the cached records)."""
        if self.state is None:
            raise ValueError("load an image first: load_example() or load_image()")
        self.result = self.comparison.click(self.key, int(x), int(y))
        self.state = self.result.state
        lo, hi = self.result.scale()
        self.norm.vmin, self.norm.vmax = lo, hi  # every final map and the colour bar follow
        h, w = self.state.size
        for head in self.result.heads:
            ax = self.axes["final"][head.name]
            if head.maps is None:
                ax.set_title(f"{head.name}: no attention", fontsize=9)
                if not ax.texts:
                    ax.text(0.5, 0.85, "no attention map", ha="center", transform=ax.transAxes)
                continue
            log_map = head.maps.on_image(head.final_map).double().clamp_min(1e-300).log10()
            if head.name in self.final_images:
                self.final_images[head.name].set_data(log_map.numpy())
            else:
                self.final_images[head.name] = ax.imshow(
                    log_map.numpy(), cmap=CMAP, norm=self.norm, alpha=self.opacity,
                    extent=(0, w, h, 0), interpolation="nearest",
                )  # fmt: skip
            ax.set_title(f"{head.name}: {head.final_map} map", fontsize=9)
        for marker in self._markers:
            marker.set_data([x + 0.5], [y + 0.5])
        for head in self.result.heads:
            self.texts[head.name].set_text(self.statistics_text(head))
        self.fig.suptitle(
            f"query ({x}, {y}): click any map or prediction to move it\n"
            f"the final maps share one log scale, 1e{lo:.1f} to 1e{hi:.1f}",
            fontsize=9,
        )
        self.fig.canvas.draw_idle()
        return self.result

    def statistics_text(self, head: HeadClick) -> str:
        """A model's column text: its prediction, and its final map's statistics at the query
        (:data:`map_stats.LABELS`, :func:`fmt`) with their whole-image means once computed."""
        lines = [f"predicted {head.class_name} (p = {head.confidence:.2f})"]
        if head.maps is None:
            return "\n".join([*lines, "no attention: no map to measure"])
        means = self.state.averages.get(head.name)
        for key, value in head.statistics.items():
            mean = f" (mean {fmt(key, means.means[key])})" if means is not None else ""
            lines.append(f"{map_stats.LABELS[key]}: {fmt(key, value)}{mean}")
        if means is None:
            lines.append("image means: press 'whole-image means'")
        else:
            sample = "" if means.complete else ", a random sample"
            lines.append(f"means over {means.done} of {means.total} cells{sample}")
        return "\n".join(lines)

    def on_click(self, event: Any) -> None:
        """Matplotlib ``button_press_event``: a click inside a map or prediction selects that
        pixel; anywhere else (statistics, colour bar, margins) is ignored."""
        panels = [*self.axes.get("final", {}).values(), *self.axes.get("prediction", {}).values()]
        if self.state is None or event.inaxes not in panels or event.xdata is None:
            return
        h, w = self.state.size
        x = min(max(int(event.xdata), 0), w - 1)
        y = min(max(int(event.ydata), 0), h - 1)
        self.select(x, y)

    # -- controls -------------------------------------------------------------------------
    def _sync(self, **values: Any) -> None:
        """Set controls (``scene``, ``cue``, ``heads``) from code, without their callbacks."""
        controls = dict(zip(("scene", "cue", "heads"), self.controls, strict=False))
        with self._quiet():
            for name, value in values.items():
                if name in controls:
                    controls[name].value = value

    def _say(self, message: str) -> None:
        self.fig.suptitle(message, fontsize=9)
        self.fig.canvas.draw_idle()

    def _build_controls(self) -> list:
        try:
            w = _widgets()
        except ImportError:
            return []
        scene = w.IntSlider(3, 0, NUM_EXAMPLES - 1, description="scene")
        cue = w.Dropdown(options=list(CONTEXTS), value="as drawn", description="cue")
        heads = w.SelectMultiple(
            options=self.comparison.names,
            value=tuple(self.names),
            rows=min(len(self.comparison.names), 7),
            description="heads",
        )
        means = w.Button(
            description="whole-image means",
            tooltip="the statistics averaged over every query cell of the image",
            layout=w.Layout(width="auto"),
        )

        def on_scene(_):
            if self._syncing:
                return
            try:
                self.load_example(scene.value, cue.value)
            except ExplorerError as e:  # e.g. a zoo model: no synthetic examples
                self._say(str(e))

        def on_heads(change):
            if self._syncing:
                return
            try:
                self.choose(list(change["new"]))
            except (ExplorerError, ValueError) as e:  # too few or too many heads
                self._say(str(e))

        def on_means(_):
            try:
                self._say("averaging over every query cell...")
                self.image_averages()
            except (ExplorerError, ValueError) as e:
                self._say(str(e))

        scene.observe(on_scene, "value")
        cue.observe(on_scene, "value")
        heads.observe(on_heads, "value")
        means.on_click(on_means)
        return [scene, cue, heads, means]
