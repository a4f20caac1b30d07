"""Notebook 3's view: click a pixel, see its attention maps, as the model's head declares them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.explorer.service import (
    CONTEXTS,
    NUM_EXAMPLES,
    ClickResult,
    Explorer,
    ExplorerError,
)
from isa_explorer.explorer.store import ImageState
from isa_explorer.explorer.widgets import base
from isa_explorer.explorer.widgets.base import _View, _widgets, new_figure
from isa_explorer.zoo.cache import cached_names as cached_zoo_models

_KEY = "notebook"  # the explorer session of a view


class AttentionView(_View):
    """Click a pixel, see the prediction and one panel per map of the model's head.

    Args:
        model: A model directory, run, zoo name, an :class:`ExplorerModel`, or ``None`` for the
            embedded default model.
        compare: A second model (e.g. another head built from the same weights) whose main
            map of the same pixel is drawn beside, or ``None``.
        compare_title: Title of the second model's panel (default: its head's name).
        opacity: Initial overlay opacity.
    """

    def __init__(
        self,
        model: str | Path | ExplorerModel | None = None,
        compare: str | Path | ExplorerModel | None = None,
        compare_title: str | None = None,
        opacity: float = 0.6,
    ):
        self.explorer = Explorer(
            model if isinstance(model, ExplorerModel) else ExplorerModel(model)
        )
        self.compare = None
        if compare is not None:
            em = compare if isinstance(compare, ExplorerModel) else ExplorerModel(compare)
            self.compare = Explorer(em)
            compare_title = f"{em.head} head" if compare_title is None else compare_title
        self.compare_title = compare_title
        self.opacity, self.show_groups = opacity, False
        self.state: ImageState | None = None
        self.result: ClickResult | None = None
        self.compare_result: ClickResult | None = None
        self.fig, self.axes = new_figure(1, 1, (2.6, 2.0))[0], {}
        self._layout()
        self.fig.canvas.mpl_connect("button_press_event", self.on_click)
        self.controls = self._build_controls()

    def _layout(self) -> None:
        """Axes for the prediction, each map of the model's head and the compared model's map;
        laid out again (same figure and canvas) when a chosen model's head has other maps."""
        maps = self.explorer.model.head_class.maps
        titles = {"prediction": "prediction", **{m.name: m.title for m in maps}}
        self._titles = titles | ({"compare": self.compare_title} if self.compare else {})
        if list(self.axes) != list(self._titles):
            n = len(self._titles)
            self.fig.clear()
            self.fig.set_size_inches(2.6 * n, 2.0)
            if base.in_kernel():
                base.keep_toolbar_strip(self.fig)
            self.axes = dict(zip(self._titles, np.atleast_1d(self.fig.subplots(1, n)), strict=True))
            for ax in self.axes.values():
                ax.set_axis_off()
            self._images: dict[str, Any] = {}

    def load_example(self, index: int = 3, context: str = "as drawn") -> ImageState:
        """Analyse a synthetic example scene (one forward pass) and draw it."""
        self.state = self.explorer.load_example(_KEY, int(index), context)
        return self._loaded()

    def load_image(self, image: Any, source: str = "image") -> ImageState:
        """Analyse an image (array, PIL image, or the path of a file) and draw it."""
        if isinstance(image, str | Path):
            self.state = self.explorer.load_file(_KEY, image)
        else:
            self.state = self.explorer.load_image(_KEY, image, source)
        return self._loaded()

    def _loaded(self) -> ImageState:
        """The compared model analyses the same pixels; the centre pixel is the first query."""
        if self.compare is not None:
            self.compare.load_image(_KEY, self.state.rgb, self.state.source)
        h, w = self.state.size
        self.select(w // 2, h // 2)
        return self.state

    def select(self, x: int, y: int) -> ClickResult:
        """Make image pixel ``(x, y)`` the query and redraw (no forward pass: cached keys)."""
        if self.state is None:
            raise ValueError("load an image first: load_example() or load_image()")
        self.result = self.explorer.click(_KEY, int(x), int(y), self.opacity, self.show_groups)
        self.state = self.result.state
        prediction = self.explorer.prediction_view(self.state, 0.5, self.show_groups)
        drawn = {"prediction": prediction, **self.result.panels}
        if self.compare is not None:
            self.compare_result = self.compare.click(_KEY, int(x), int(y), self.opacity, False)
            head = self.compare.model.head_class
            drawn["compare"] = self.compare_result.panels[head.main_map or head.maps[0].name]
        h, w = self.state.size
        for name, ax in self.axes.items():
            if name not in drawn:
                continue
            if name in self._images:
                self._images[name].set_data(drawn[name])
                self._images[name].set_extent((0, w, h, 0))
            else:  # extent in image pixels: a click's xdata/ydata is the image pixel
                self._images[name] = ax.imshow(drawn[name], extent=(0, w, h, 0))
            ax.set_title(self._titles[name], fontsize=9)
        r = self.result
        self.fig.suptitle(
            f"query ({r.query[0]}, {r.query[1]}), cell {r.cell}: {r.class_name} "
            f"(p = {r.confidence:.2f}) -- click any panel to move it",
            fontsize=10,
        )
        self.fig.canvas.draw_idle()
        return self.result

    def on_click(self, event: Any) -> None:
        """Matplotlib ``button_press_event``: a click inside a panel selects that pixel."""
        if self.state is None or event.inaxes not in self.axes.values() or event.xdata is None:
            return
        h, w = self.state.size
        x = min(max(int(event.xdata), 0), w - 1)
        y = min(max(int(event.ydata), 0), h - 1)
        self.select(x, y)

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
            if not change["new"]:
                return
            item = change["new"][0]
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
            self._layout()  # its head's maps
            if self.state is not None:
                self.load_image(self.state.rgb, self.state.source)

        scene.observe(on_scene, "value")
        cue.observe(on_scene, "value")
        opacity.observe(on_style, "value")
        groups.observe(on_style, "value")
        upload.observe(on_upload, "value")
        models.observe(on_model, "value")
        return [scene, cue, models, opacity, groups, upload]
