"""Interactive views for the notebooks: JupyterLab's own widgets, no web server.

In a Jupyter kernel each view's figure is an ipympl canvas (what ``%matplotlib widget`` gives,
without switching the notebook's backend): clicks on it reach :meth:`AttentionView.select`;
``ipywidgets`` controls redraw the views. Outside a kernel the same callbacks are plain
methods (the tests call them), and :meth:`snapshot` gives a PNG of the current state, so a
notebook read without a kernel (on GitHub, as HTML) still shows the maps.

* :class:`AttentionView` (notebook 3): the image and prediction, and the long-range, short-range
  and combined maps of the clicked pixel, from the cached queries and keys (the app's
  :class:`~isa_explorer.explorer.handlers.Explorer`: no forward pass per click); optionally the
  same pixel under a second model (the dense head) side by side.
* :class:`GroupingView` (notebook 1): the interlaced grouping of a map, a position's long-range
  group and short-range block, and the support of ``C = S @ L``.
* :class:`CostView` (notebook 2): analytic memory and FLOPs against resolution, channels and
  group size, with the committed measurements.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from isa_explorer.bench.analytic import analytic_costs, auto_group
from isa_explorer.explorer.handlers import (
    CONTEXTS,
    MAP_TITLES,
    NUM_EXAMPLES,
    ClickResult,
    Explorer,
    ExplorerError,
)
from isa_explorer.explorer.session import ExplorerModel, ImageState
from isa_explorer.models.isa.decoder import GroupGrid

_KEY = "notebook"  # the explorer session of a view
LIVE_DPI = 80  # the live canvas's resolution: five panels fit a notebook's width


def _widgets():
    import ipywidgets  # the notebooks extra; imported only when controls are built

    return ipywidgets


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel with ipympl available (live canvases)."""
    try:
        import ipympl  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def new_figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure and its axes, outside pyplot's figure list.

    In a kernel with ipympl the figure gets ipympl's live canvas (what ``%matplotlib
    widget`` gives), without switching the notebook's backend: the other figures of the
    notebook stay inline PNGs, and switching backends (which closes pyplot's figures) cannot
    close it. Elsewhere it keeps matplotlib's plain canvas: callbacks and snapshots still work.
    """
    fig = Figure(figsize=figsize, dpi=LIVE_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols)
    if in_kernel():
        from ipympl.backend_nbagg import Canvas, FigureManager

        canvas = Canvas(fig)
        FigureManager(canvas, id(fig))
        canvas.header_visible = False  # no "Figure <number>" line
    return fig, axes


def snapshot_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (the static copy a notebook keeps in its output)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def cached_zoo_models() -> list[str]:
    """Names of the zoo models already in the cache (loading them is offline)."""
    from isa_explorer import zoo

    try:
        return [name for name, entry in zoo.entries().items() if zoo.is_cached(entry)]
    except zoo.ZooError:
        return []


class _View:
    """What the views share: a figure, controls, a box of both, a PNG snapshot."""

    fig: Figure
    controls: list
    _syncing: bool = False

    @contextlib.contextmanager
    def _quiet(self):
        """Set controls from code without their callbacks running again."""
        self._syncing = True
        try:
            yield
        finally:
            self._syncing = False

    def widget(self) -> Any:
        """Controls above the figure: its live canvas under ipympl, else a PNG of it."""
        w = _widgets()
        canvas = self.fig.canvas
        if not isinstance(canvas, w.DOMWidget):  # no live canvas: a picture of the figure
            canvas = w.Image(value=snapshot_png(self.fig), format="png")
        return w.VBox([w.HBox(self.controls[:3]), w.HBox(self.controls[3:]), canvas])

    def snapshot(self) -> Any:
        """The current state as an ``IPython.display.Image``."""
        from IPython.display import Image

        return Image(snapshot_png(self.fig))


class AttentionView(_View):
    """Click a pixel, see its long-range, short-range and combined attention.

    Args:
        model: A model directory, run, zoo name, an :class:`ExplorerModel`, or ``None`` for the
            embedded default model.
        compare: A second model (e.g. the dense head built from the same weights) whose map
            of the same pixel is drawn beside, or ``None``.
        compare_title: Title of the second model's panel.
        opacity: Initial overlay opacity.
    """

    def __init__(
        self,
        model: str | Path | ExplorerModel | None = None,
        compare: str | Path | ExplorerModel | None = None,
        compare_title: str = "dense head, same weights",
        opacity: float = 0.6,
    ):
        self.explorer = Explorer(
            model if isinstance(model, ExplorerModel) else ExplorerModel(model)
        )
        self.compare = None
        if compare is not None:
            em = compare if isinstance(compare, ExplorerModel) else ExplorerModel(compare)
            self.compare = Explorer(em)
        self.compare_title = compare_title
        self.opacity, self.show_groups = opacity, False
        self.state: ImageState | None = None
        self.result: ClickResult | None = None
        self.compare_result: ClickResult | None = None
        panels = ["prediction", "long", "short", "combined"] + (["compare"] if self.compare else [])
        self.fig, axes = new_figure(1, len(panels), (2.6 * len(panels), 2.0))
        self.axes = dict(zip(panels, np.atleast_1d(axes), strict=True))
        for ax in self.axes.values():
            ax.set_axis_off()
        self._images: dict[str, Any] = {}
        self.fig.canvas.mpl_connect("button_press_event", self.on_click)
        self.controls = self._build_controls()

    # -- data --------------------------------------------------------------------------------

    def load_example(self, index: int = 3, context: str = "as drawn") -> ImageState:
        """Analyse a synthetic example scene (one forward pass) and draw it."""
        self.state = self.explorer.load_example(_KEY, int(index), context)
        if self.compare is not None:
            self.compare.load_image(_KEY, self.state.rgb, self.state.source)
        return self._loaded()

    def load_image(self, image: Any, source: str = "image") -> ImageState:
        """Analyse an image (array, PIL image, or the path of a file) and draw it."""
        if isinstance(image, str | Path):
            self.state = self.explorer.load_file(_KEY, image)
        else:
            self.state = self.explorer.load_image(_KEY, image, source)
        if self.compare is not None:
            self.compare.load_image(_KEY, self.state.rgb, self.state.source)
        return self._loaded()

    def _loaded(self) -> ImageState:
        h, w = self.state.size
        self.select(w // 2, h // 2)
        return self.state

    # -- clicks ------------------------------------------------------------------------------

    def select(self, x: int, y: int) -> ClickResult:
        """Make image pixel ``(x, y)`` the query and redraw (no forward pass: cached keys)."""
        if self.state is None:
            raise ValueError("load an image first: load_example() or load_image()")
        ex = self.explorer
        self.result = ex.click(_KEY, int(x), int(y), self.opacity, self.show_groups)
        prediction = ex.prediction_view(self.state, 0.5, self.show_groups)
        drawn = {"prediction": prediction, **self.result.panels}
        if self.compare is not None:
            self.compare_result = self.compare.click(_KEY, int(x), int(y), self.opacity, False)
            drawn["compare"] = next(iter(self.compare_result.panels.values()))
        h, w = self.state.size
        for name, ax in self.axes.items():
            if name not in drawn:
                continue
            if name in self._images:
                self._images[name].set_data(drawn[name])
                self._images[name].set_extent((0, w, h, 0))
            else:  # extent in image pixels: a click's xdata/ydata is the image pixel
                self._images[name] = ax.imshow(drawn[name], extent=(0, w, h, 0))
            ax.set_title(self._title(name), fontsize=9)
        r = self.result
        self.fig.suptitle(
            f"query ({r.query[0]}, {r.query[1]}), cell {r.cell}: {r.class_name} "
            f"(p = {r.confidence:.2f}) -- click any panel to move it",
            fontsize=10,
        )
        self.fig.canvas.draw_idle()
        return self.result

    def _title(self, name: str) -> str:
        if name == "prediction":
            return "prediction"
        if name == "compare":
            return self.compare_title
        return MAP_TITLES.get(name, name).split(" (")[0]

    def on_click(self, event: Any) -> None:
        """Matplotlib ``button_press_event``: a click inside a panel selects that pixel."""
        if self.state is None or event.inaxes not in self.axes.values() or event.xdata is None:
            return
        h, w = self.state.size
        x = min(max(int(event.xdata), 0), w - 1)
        y = min(max(int(event.ydata), 0), h - 1)
        self.select(x, y)

    # -- controls ----------------------------------------------------------------------------

    def _build_controls(self) -> list:
        try:
            w = _widgets()
        except ImportError:
            return []
        scene = w.IntSlider(3, 0, NUM_EXAMPLES - 1, description="scene")
        cue = w.Dropdown(options=list(CONTEXTS), value="as drawn", description="cue")
        opacity = w.FloatSlider(self.opacity, min=0.0, max=1.0, step=0.05, description="opacity")
        groups = w.Checkbox(False, description="show groups")
        upload = w.FileUpload(accept="image/*", multiple=False, description="your image")
        models = w.Dropdown(
            options=["default", *cached_zoo_models()], value="default", description="model"
        )

        def on_scene(_):
            try:
                self.load_example(scene.value, cue.value)
            except ExplorerError as e:  # e.g. a zoo model: no synthetic examples
                self.fig.suptitle(str(e), fontsize=9)
                self.fig.canvas.draw_idle()

        def on_style(_):
            self.opacity, self.show_groups = opacity.value, groups.value
            if self.result is not None:
                self.select(*self.result.query)

        def on_upload(change):
            files = change["new"]
            if not files:
                return
            item = files[0]
            suffix = Path(item["name"]).suffix or ".png"
            with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
                f.write(bytes(item["content"]))
            try:
                self.load_image(f.name)
                self.state.source = f"upload {item['name']}"
            except ExplorerError as e:  # a corrupt or unsupported file: say so on the figure
                self.fig.suptitle(f"{item['name']}: {e}".replace(f.name, item["name"]), fontsize=9)
                self.fig.canvas.draw_idle()
            finally:
                Path(f.name).unlink(missing_ok=True)

        def on_model(change):
            name = None if change["new"] == "default" else change["new"]
            self.explorer = Explorer(ExplorerModel(name))
            if self.state is not None:
                self.load_image(self.state.rgb, self.state.source)

        scene.observe(on_scene, "value")
        cue.observe(on_scene, "value")
        opacity.observe(on_style, "value")
        groups.observe(on_style, "value")
        upload.observe(on_upload, "value")
        models.observe(on_model, "value")
        return [scene, cue, models, opacity, groups, upload]


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


class CostView(_View):
    """Analytic memory and FLOPs of ISA and dense attention, with the committed measurements.

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
        """``analytic_costs`` of ISA (explicit) and dense at a resolution (default: current)."""
        h, w = (v // 8 for v in (resolution or self.resolution))
        c = self.channels
        out = analytic_costs(h, w, group or self.group, channels=c, isa_channels=max(1, c // 2))
        return {"isa": out["isa-explicit"], "dense": out["dense-explicit"]}

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
        n = [c["isa"]["positions"] for c in curves]
        for kind, style in (("isa", "-"), ("dense", "--")):
            mem = [c[kind]["predicted_peak_bytes"]["forward"] / 2**20 for c in curves]
            flops = [c[kind]["flops"]["forward"] / 1e9 for c in curves]
            label = f"{kind} ({self.group}x{self.group})" if kind == "isa" else kind
            ax_mem.loglog(n, mem, style, label=f"{label}, analytic")
            ax_flops.loglog(n, flops, style, label=label)
        for module, marker in (("isa-explicit", "o"), ("dense-explicit", "s")):
            rows = [
                r for r in self.committed.get("results", [])
                if r.get("module") == module and r.get("pass") == "forward"
                and r.get("status") == "ok" and r.get("group") in (8, None)
            ]  # fmt: skip
            if rows:
                ax_mem.loglog(
                    [r["positions"] for r in rows], [r["peak_mib"] for r in rows], marker,
                    label=f"{module}, measured (committed)",
                )  # fmt: skip
        now = self.costs()
        for ax, key in ((ax_mem, "mem"), (ax_flops, "flops")):
            for kind in ("isa", "dense"):
                c = now[kind]
                y = c["predicted_peak_bytes"]["forward"] / 2**20 if key == "mem" else (
                    c["flops"]["forward"] / 1e9
                )  # fmt: skip
                ax.plot(c["positions"], y, "k*", ms=10)
            ax.set_xlabel("feature positions N")
            ax.legend(fontsize=7)
        ax_mem.set_title(f"peak memory (MiB), C = {self.channels}", fontsize=9)
        ax_flops.set_title("forward GFLOPs (star: the chosen resolution)", fontsize=9)
        sides = np.arange(1, 33)
        entries = [self.costs(group=int(s))["isa"]["affinity_elements"] for s in sides]
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
