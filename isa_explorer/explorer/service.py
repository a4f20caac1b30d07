"""The explorer service, free of any UI: load an image, predict, answer clicks.

:class:`Explorer` keeps one analysed image per session key in a bounded
:class:`~isa_explorer.explorer.store.SessionStore`; every method either returns plain arrays
and strings or raises :class:`ExplorerError` with a message for the user. Which maps a click
shows, and their order, come from the model's head class (:mod:`isa_explorer.heads`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer import heads
from isa_explorer.attention import AttentionMaps, query_maps
from isa_explorer.data.synthetic import generate
from isa_explorer.explorer import render
from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.explorer.store import ImageState, SessionStore
from isa_explorer.explorer.uploads import (
    FORMAT_NAMES,
    CheckedImage,
    ExplorerError,
    check_image,
    load_image_file,
)

#: Seed of the example scenes (the explorer draws them on demand, nothing is stored).
EXAMPLE_SEED = 20260
#: Number of example scenes offered.
NUM_EXAMPLES = 100
#: Context choices of an example: keep the drawn cue or force it red / blue.
CONTEXTS = {"as drawn": None, "red cue": 0, "blue cue": 1}


@dataclass
class ClickResult:
    """Answer to a click.

    Attributes:
        query: Image pixel ``(x, y)``.
        cell: Feature cell ``(fx, fy)`` of the query.
        class_name: Predicted class at the query.
        confidence: Its softmax probability.
        maps: The attention maps on the feature grid, in the head's order.
        panels: ``{name: (dh, dw, 3) uint8}`` heat maps over the image, query marked.
        regions: Markdown list of the most attended cells and mass per predicted class.
        state: The image's state with this query (the one now stored for the session).
    """

    query: tuple[int, int]
    cell: tuple[int, int]
    class_name: str
    confidence: float
    maps: AttentionMaps
    panels: dict[str, np.ndarray]
    regions: str
    state: ImageState


class Explorer:
    """Predictions and attention maps of images, per session.

    Args:
        model: The model wrapper (loaded lazily).
        store: Where analysed images are kept; a default bounded store if ``None``.
    """

    def __init__(self, model: ExplorerModel, store: SessionStore | None = None):
        self.model = model
        self.store = store if store is not None else SessionStore()

    def example_image(self, index: int, context: str = "as drawn") -> CheckedImage:
        """Synthetic scene ``index`` at the model's training size."""
        return CheckedImage(self.example_scene(index, context)[0])

    def example_scene(self, index: int, context: str = "as drawn") -> tuple[np.ndarray, np.ndarray]:
        """Synthetic scene ``index`` at the model's training size and its true classes:
        ``(H, W, 3)`` uint8, ``(H, W)`` int64 (the arguments checked, with their messages)."""
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
        return generate(EXAMPLE_SEED, index, self.model.train_size, CONTEXTS[context])

    def load_example(self, key: str, index: int, context: str = "as drawn") -> ImageState:
        """Analyse example ``index`` for session ``key``."""
        src = f"example {int(index)} ({context})"  # its size is said with every image's
        return self.load_checked(key, self.example_image(index, context), src)

    def load_file(self, key: str, path: str | Path | None) -> ImageState:
        """Analyse an uploaded file for session ``key``."""
        if path is None:
            raise ExplorerError(f"no file received; upload a {FORMAT_NAMES} image")
        return self.load_checked(key, load_image_file(path), f"upload {Path(path).name}")

    def load_image(
        self, key: str, image: Image.Image | np.ndarray | None, source: str = "image"
    ) -> ImageState:
        """Analyse a PIL image or array for session ``key``."""
        return self.load_checked(key, check_image(image), source)

    def load_checked(self, key: str, checked: CheckedImage, source: str) -> ImageState:
        """Analyse a checked image for session ``key`` (its notes added to ``source``)."""
        state = self.model.analyse(checked.rgb)
        notes = "; ".join(checked.notes)
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

    def display(self, state: ImageState) -> render.Display:
        return render.Display.of(*state.size)

    def _view(self, state: ImageState, name: str) -> np.ndarray:
        """Arrays derived once per image: ``rgb``, ``labels`` (colours) at display size, and
        ``cell_labels``, the ``(h, w)`` predicted class at the centre pixel of every cell."""
        if name not in state.view:
            d = self.display(state)
            if name == "rgb":
                state.view[name] = render.resize_rgb(state.rgb, d)
            elif name == "labels":
                state.view[name] = render.label_image(state.labels, self.model.palette, d)
            elif name == "cell_labels":
                rows, cols = state.cache.cell_centres()
                state.view[name] = state.labels[rows][:, cols]
        return state.view[name]

    def prediction_view(
        self, state: ImageState, opacity: float = 0.5, show_grid: bool = False
    ) -> np.ndarray:
        """The prediction as a colour overlay at display size (last query marked)."""
        d = self.display(state)
        out = render.blend(self._view(state, "rgb"), self._view(state, "labels"), opacity)
        if show_grid and state.cache is not None:
            edges = state.cache.record.block_edges()
            out = render.draw_grid(out, edges, state.cache.cell_edges(), d)
        if state.query is not None:
            out = render.mark_query(out, *state.query, d)
        return np.asarray(out)

    def legend(self, state: ImageState) -> str:
        """Legend of the palette with the share of pixels predicted per class."""
        k = len(self.model.class_names)
        fractions = np.bincount(state.labels.ravel(), minlength=k) / state.labels.size
        return render.legend_html(self.model.class_names, self.model.palette, fractions)

    def click_display(
        self, key: str, x: float, y: float, opacity: float = 0.6, show_grid: bool = False
    ) -> ClickResult:
        """A click at display pixel ``(x, y)`` of the prediction image of session ``key``."""
        d = self.display(self.state(key))
        dh, dw = d.size
        if not (0 <= x < dw and 0 <= y < dh):
            raise ExplorerError(f"the click at ({x}, {y}) is outside the image; click on it")
        return self.click(key, *d.to_image(x, y), opacity, show_grid)

    def click(
        self,
        key: str,
        x: int,
        y: int,
        opacity: float = 0.6,
        show_grid: bool = False,
        top_k: int = 5,
    ) -> ClickResult:
        """Attention maps of image pixel ``(x, y)`` of session ``key``, drawn over the image;
        the clicked state is a new one (arrays shared, ``query`` set): ``ClickResult.state``."""
        old = self.state(key)
        maps = self.attention(old, x, y)
        state = dataclasses.replace(old, query=maps.query)
        self.store.put(key, state, replacing=old)
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
                f"this model's {self.model.head!r} head has no attention maps; load a model "
                f"whose head has attention maps: {', '.join(heads.with_attention())} "
                "(--checkpoint)"
            )
        return query_maps(state.cache, *check_pixel(x, y, state.size))

    def render_click(
        self,
        state: ImageState,
        maps: AttentionMaps,
        opacity: float = 0.6,
        show_grid: bool = False,
        top_k: int = 5,
    ) -> ClickResult:
        """Draw the head's maps of a query over the image (with ``show_grid``, its block edges
        and the cells each map's step reaches) and describe where it looks."""
        d, cache = self.display(state), state.cache
        base = render.as_pil(self._view(state, "rgb"))
        panels = {}
        blocks, edges = cache.record.block_edges(), cache.cell_edges()
        for info in cache.head.maps:
            panel = render.heat_panel(base, maps[info.name].numpy(), cache.pixel_cells, d, opacity)
            if show_grid:
                panel = render.draw_grid(panel, blocks, edges, d, maps.reach.get(info.reach))
            panels[info.name] = np.asarray(render.mark_query(panel, *maps.query, d))
        x, y = maps.query
        name, p = self.model.class_names[int(state.labels[y, x])], float(state.confidence[y, x])
        regions = self.describe(state, maps, cache.head.main_map or cache.head.maps[0].name, top_k)
        return ClickResult(maps.query, maps.query_feature, name, p, maps, panels, regions, state)

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
            where = f"({fx}, {fy}) | {cols[fx]}-{cols[fx + 1] - 1}, {rows[fy]}-{rows[fy + 1] - 1}"
            cls = names[int(cells[fy, fx])]
            lines.append(f"| {rank} | {where} | {cls} | {m[fy, fx]:.1%} |")
        mass = np.bincount(cells.ravel(), weights=m.ravel(), minlength=len(names))
        top = np.argsort(mass)[::-1][:4]
        parts = [f"{names[k]} {mass[k]:.0%}" for k in top if mass[k] >= 0.005]
        lines += ["", "**Attention by predicted class:** " + ", ".join(parts)]
        return "\n".join(lines)


def check_pixel(x: object, y: object, size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel ``(x, y)`` of an image of ``size`` ``(H, W)``, checked: whole numbers
    (``5`` or ``5.0``; never rounded: ``3.5``, NaN, infinities, strings and booleans are
    refused) inside the image.

    Raises:
        ExplorerError: A coordinate missing, not a whole number or outside the image (the
            message names it and the fix).
    """
    h, w = size
    coords = []
    for name, value, limit in (("x", x, w), ("y", y, h)):
        fix = f"send a whole number 0 <= {name} < {limit}, e.g. {name}={limit // 2}"
        if value is None:
            raise ExplorerError(f"give both pixel coordinates x and y: {name} is missing; {fix}")
        if isinstance(value, bool) or not isinstance(value, Real):  # numpy's too, not bool_
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
            f"pixel (x={x}, y={y}) is outside the {w}x{h} image: use 0 <= x < {w} and 0 <= y < {h}"
        )
    return x, y
