"""The explorer's logic, free of any UI: load an image, predict, answer clicks.

:class:`Explorer` keeps one analysed image per session key in a bounded
:class:`~isa_explorer.explorer.session.SessionStore`; every method either returns plain arrays
and strings or raises :class:`ExplorerError` with a message for the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer.attention import AttentionMaps, query_maps
from isa_explorer.data.synthetic import generate
from isa_explorer.explorer import render
from isa_explorer.explorer.images import (
    FORMAT_NAMES,
    ImageInputError,
    PreparedImage,
    load_image_file,
    prepare_image,
)
from isa_explorer.explorer.session import ExplorerModel, ImageState, SessionStore

#: Seed of the example scenes (the explorer draws them on demand, nothing is stored).
EXAMPLE_SEED = 20260
#: Number of example scenes offered.
NUM_EXAMPLES = 100
#: Context choices of an example: keep the drawn cue or force it red / blue.
CONTEXTS = {"as drawn": None, "red cue": 0, "blue cue": 1}
#: Map names in display order per head.
MAP_TITLES = {
    "long": "Long-range (same offset in every 8x8 block)",
    "short": "Short-range (inside the query's block)",
    "combined": "Combined (long then short)",
    "dense": "Dense attention",
}


class ExplorerError(ValueError):
    """A request the explorer cannot answer; the message is for the user."""


@dataclass
class ClickResult:
    """Answer to a click.

    Attributes:
        query: Image pixel ``(x, y)``.
        cell: Feature cell ``(fx, fy)`` of the query.
        class_name: Predicted class at the query.
        confidence: Its softmax probability.
        maps: The attention maps on the feature grid.
        panels: ``{name: (dh, dw, 3) uint8}`` heat maps over the image, query marked.
        regions: Markdown list of the most attended cells and mass per predicted class.
    """

    query: tuple[int, int]
    cell: tuple[int, int]
    class_name: str
    confidence: float
    maps: AttentionMaps
    panels: dict[str, np.ndarray]
    regions: str


class Explorer:
    """Predictions and attention maps of images, per session.

    Args:
        model: The model wrapper (loaded lazily).
        store: Where analysed images are kept; a default bounded store if ``None``.
    """

    def __init__(self, model: ExplorerModel, store: SessionStore | None = None):
        self.model = model
        self.store = store if store is not None else SessionStore()

    # -- loading ----------------------------------------------------------------------------

    def example_image(self, index: int, context: str = "as drawn") -> PreparedImage:
        """Synthetic scene ``index`` at the model's training size."""
        if not self.model.is_synthetic:
            raise ExplorerError(
                "examples are synthetic context scenes, which this model was not trained on; "
                "upload an image instead"
            )
        if context not in CONTEXTS:
            raise ExplorerError(f"context must be one of {list(CONTEXTS)}, got {context!r}")
        index = int(index)
        if not 0 <= index < NUM_EXAMPLES:
            raise ExplorerError(f"example index must be in 0..{NUM_EXAMPLES - 1}, got {index}")
        rgb, _ = generate(EXAMPLE_SEED, index, self.model.train_size, CONTEXTS[context])
        return PreparedImage(rgb)

    def load_example(self, key: str, index: int, context: str = "as drawn") -> ImageState:
        """Analyse example ``index`` for session ``key``."""
        src = f"example {int(index)} ({context})"  # its size is said with every image's
        return self._analyse(key, self.example_image(index, context), src)

    def load_file(self, key: str, path: str | Path | None) -> ImageState:
        """Analyse an uploaded file for session ``key``."""
        if path is None:
            raise ExplorerError(f"no file received; upload a {FORMAT_NAMES} image")
        try:
            prepared = load_image_file(path)
        except ImageInputError as err:
            raise ExplorerError(str(err)) from None
        return self._analyse(key, prepared, f"upload {Path(path).name}")

    def load_image(
        self, key: str, image: Image.Image | np.ndarray | None, source: str = "image"
    ) -> ImageState:
        """Analyse a PIL image or array for session ``key``."""
        try:
            prepared = prepare_image(image)
        except ImageInputError as err:
            raise ExplorerError(str(err)) from None
        return self._analyse(key, prepared, source)

    def _analyse(self, key: str, prepared: PreparedImage, source: str) -> ImageState:
        state = self.model.analyse(prepared.rgb)
        notes = "; ".join(prepared.notes)
        state.source = source + (f" -- {notes}" if notes else "")
        self.store.put(key, state)
        return state

    def state(self, key: str) -> ImageState:
        """The analysed image of session ``key``; raises if none is loaded (or it expired)."""
        state = self.store.get(key)
        if state is None:
            raise ExplorerError(
                "no image loaded yet (or it was dropped from the server's memory after a while): "
                "pick an example or upload an image first"
            )
        return state

    # -- views ------------------------------------------------------------------------------

    def display(self, state: ImageState) -> render.Display:
        return render.Display.of(*state.size)

    def _view(self, state: ImageState, name: str) -> np.ndarray:
        """Display-size arrays derived once per image: ``rgb``, ``labels`` (colours)."""
        if name not in state.view:
            d = self.display(state)
            if name == "rgb":
                state.view[name] = render.resize_rgb(state.rgb, d)
            elif name == "labels":
                state.view[name] = render.label_image(state.labels, self.model.palette, d)
            elif name == "cell_labels":
                state.view[name] = _cell_labels(state)
        return state.view[name]

    def prediction_view(
        self, state: ImageState, opacity: float = 0.5, show_grid: bool = False
    ) -> np.ndarray:
        """The prediction as a colour overlay at display size (last query marked)."""
        d = self.display(state)
        out = render.blend(self._view(state, "rgb"), self._view(state, "labels"), opacity)
        if show_grid and state.cache is not None:
            out = render.draw_grid(out, state.cache.grid, state.cache.cell_edges(), d)
        if state.query is not None:
            out = render.mark_query(out, *state.query, d)
        return np.asarray(out)

    def legend(self, state: ImageState) -> str:
        """Legend of the palette with the share of pixels predicted per class."""
        k = len(self.model.class_names)
        fractions = np.bincount(state.labels.ravel(), minlength=k) / state.labels.size
        return render.legend_html(self.model.class_names, self.model.palette, fractions)

    # -- clicks -----------------------------------------------------------------------------

    def click_display(
        self, key: str, x: float, y: float, opacity: float = 0.6, show_grid: bool = False
    ) -> ClickResult:
        """A click at display pixel ``(x, y)`` of the prediction image of session ``key``."""
        state = self.state(key)
        dh, dw = self.display(state).size
        if not (0 <= x < dw and 0 <= y < dh):
            raise ExplorerError(f"the click at ({x}, {y}) is outside the image; click on it")
        ix, iy = self.display(state).to_image(x, y)
        return self.click(key, ix, iy, opacity, show_grid)

    def click(
        self,
        key: str,
        x: int,
        y: int,
        opacity: float = 0.6,
        show_grid: bool = False,
        top_k: int = 5,
    ) -> ClickResult:
        """Attention maps of image pixel ``(x, y)`` of session ``key``, drawn over the image."""
        state = self.state(key)
        maps = self.attention(state, x, y)
        state.query = (int(x), int(y))
        return self.render_click(state, maps, opacity, show_grid, top_k)

    def attention(self, state: ImageState, x: int, y: int) -> AttentionMaps:
        """The attention maps of image pixel ``(x, y)`` from the cached queries/keys.

        Args:
            state: An analysed image.
            x: Column of the pixel, a whole number ``0 <= x < width`` (``5`` or ``5.0``; never
                rounded: ``3.5``, NaN, infinities, strings and booleans are refused).
            y: Row of the pixel, a whole number ``0 <= y < height``.

        Raises:
            ExplorerError: The model has no attention maps, or a coordinate is missing, not a
                whole number or outside the image (the message names it and the fix).
        """
        if state.cache is None:
            raise ExplorerError(
                f"this model's {self.model.head!r} head has no attention maps; load an "
                "ISA or dense-attention model (--checkpoint)"
            )
        h, w = state.size
        coords = []
        for name, value, limit in (("x", x, w), ("y", y, h)):
            fix = f"send a whole number 0 <= {name} < {limit}, e.g. {name}={limit // 2}"
            if value is None:
                raise ExplorerError(
                    f"give both pixel coordinates x and y: {name} is missing; {fix}"
                )
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, int | float | np.integer | np.floating
            ):
                raise ExplorerError(
                    f"pixel coordinate {name} must be a number, got {value!r} "
                    f"({type(value).__name__}); {fix}"
                )
            if isinstance(value, float | np.floating) and not np.isfinite(value):
                raise ExplorerError(f"pixel coordinate {name} must be finite, got {value}; {fix}")
            if value != int(value):
                raise ExplorerError(
                    f"pixel coordinates must be whole numbers, got {name}={value}: coordinates "
                    f"are not rounded; send {name}={int(np.floor(value))} or "
                    f"{name}={int(np.ceil(value))}"
                )
            coords.append(int(value))
        x, y = coords
        if not (0 <= x < w and 0 <= y < h):
            raise ExplorerError(
                f"pixel (x={x}, y={y}) is outside the {w}x{h} image: use 0 <= x < {w} and "
                f"0 <= y < {h}"
            )
        return query_maps(state.cache, x, y)

    def render_click(
        self,
        state: ImageState,
        maps: AttentionMaps,
        opacity: float = 0.6,
        show_grid: bool = False,
        top_k: int = 5,
    ) -> ClickResult:
        """Draw the maps of a query over the image and describe where it looks."""
        d = self.display(state)
        cache = state.cache
        base = render.as_pil(self._view(state, "rgb"))
        highlight = {"long": "long", "short": "short"}
        panels = {}
        edges = cache.cell_edges()
        for name, m in maps.maps.items():
            panel = render.heat_panel(base, m.numpy(), cache.pixel_cells, d, opacity)
            if show_grid:
                panel = render.draw_grid(
                    panel, cache.grid, edges, d, maps.query_feature, highlight.get(name)
                )
            panels[name] = np.asarray(render.mark_query(panel, *maps.query, d))
        x, y = maps.query
        label = int(state.labels[y, x])
        main = "combined" if "combined" in maps.maps else "dense"
        regions = self.describe(state, maps, main, top_k)
        return ClickResult(
            maps.query,
            maps.query_feature,
            self.model.class_names[label],
            float(state.confidence[y, x]),
            maps,
            panels,
            regions,
        )

    def describe(self, state: ImageState, maps: AttentionMaps, name: str, top_k: int = 5) -> str:
        """Markdown: the ``top_k`` cells of map ``name`` and its mass per predicted class."""
        m = maps.maps[name].numpy().astype(np.float64)
        cells = self._view(state, "cell_labels")
        s, (rows, cols) = state.cache.stride, state.cache.cell_edges()
        names = self.model.class_names
        order = np.argsort(m.ravel())[::-1][:top_k]
        lines = [
            f"**Most attended cells** ({name} map, feature cells of about {s}x{s} pixels; share "
            "of the query's attention):",
            "",
            "| # | cell (fx, fy) | pixels x, y | predicted class | share |",
            "|---|---|---|---|---|",
        ]
        for rank, i in enumerate(order, 1):
            fy, fx = divmod(int(i), m.shape[1])
            xs = f"{cols[fx]}-{cols[fx + 1] - 1}"
            ys = f"{rows[fy]}-{rows[fy + 1] - 1}"
            cls = names[int(cells[fy, fx])]
            lines.append(f"| {rank} | ({fx}, {fy}) | {xs}, {ys} | {cls} | {m[fy, fx]:.1%} |")
        mass = np.bincount(cells.ravel(), weights=m.ravel(), minlength=len(names))
        top = np.argsort(mass)[::-1][:4]
        parts = [f"{names[k]} {mass[k]:.0%}" for k in top if mass[k] >= 0.005]
        lines += ["", "**Attention by predicted class:** " + ", ".join(parts)]
        return "\n".join(lines)


def _cell_labels(state: ImageState) -> np.ndarray:
    """``(h, w)`` predicted class at the centre pixel of every feature cell."""
    row_edges, col_edges = state.cache.cell_edges()
    rows = (row_edges[:-1] + np.maximum(row_edges[1:] - 1, row_edges[:-1])) // 2
    cols = (col_edges[:-1] + np.maximum(col_edges[1:] - 1, col_edges[:-1])) // 2
    return state.labels[rows][:, cols]
