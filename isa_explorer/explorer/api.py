"""Stateless answers for programmatic clients (the app's ``predict`` / ``attention`` endpoints).

Each call takes an image, analysed once: it is kept in the explorer's store under a key made
from its pixels. Sizes in the answers are ``{"width": W, "height": H}``; points are ``[x, y]``
(column, row); 2-D maps are nested lists, rows first: ``maps[name][row][column]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer.explorer.compare import Comparison
from isa_explorer.explorer.compare_state import CompareState
from isa_explorer.explorer.service import Explorer, ExplorerError, check_pixel
from isa_explorer.explorer.store import ImageState
from isa_explorer.explorer.uploads import check_image, load_image_file


def analyse_cached(
    explorer: Explorer, image: str | Path | Image.Image | np.ndarray | None
) -> ImageState:
    """Analyse ``image`` (or reuse the stored analysis of the same pixels).

    Args:
        explorer: The app's explorer.
        image: The path of a file the server received (decoded by the project's own reader,
            :func:`load_image_file`, so API clients get the same messages as the browser), or
            an already decoded PIL image or array.

    Raises:
        ExplorerError: No image, or a file that is not a usable image (the message says why).
    """
    if image is None:
        raise ExplorerError("no image received; send a PNG, JPEG or WebP file")
    checked = load_image_file(image) if isinstance(image, str | Path) else check_image(image)
    rgb = checked.rgb
    key = image_key("api", rgb)
    return explorer.store.get(key) or explorer.load_checked(key, checked, "api")


def image_key(prefix: str, rgb: np.ndarray) -> str:
    """The store key of an API client's image: its size and a hash of its pixels."""
    return f"{prefix}:{rgb.shape[0]}x{rgb.shape[1]}:{hashlib.sha1(rgb.tobytes()).hexdigest()[:20]}"


def size_dict(hw: tuple[int, int]) -> dict[str, int]:
    """``(height, width)`` -> ``{"width": W, "height": H}``: the one size format of the API."""
    h, w = hw
    return {"width": int(w), "height": int(h)}


def predict_summary(explorer: Explorer, state: ImageState) -> dict:
    """JSON-ready description of a prediction: size, classes and the share of each.

    Returns:
        ``size`` ``{"width", "height"}`` of the analysed image (after any resize),
        ``class_names``, ``palette`` (RGB per class), ``class_fractions`` ``{name: share}``
        and ``notes`` (conversions applied to the image).
    """
    names = explorer.model.class_names
    counts = np.bincount(state.labels.ravel(), minlength=len(names)) / state.labels.size
    return {
        "size": size_dict(state.size),
        "class_names": names,
        "palette": explorer.model.palette.tolist(),
        "class_fractions": {n: round(float(f), 6) for n, f in zip(names, counts, strict=True)},
        "notes": state.source,
    }


def attention_summary(explorer: Explorer, state: ImageState, x: object, y: object) -> dict:
    """JSON-ready attention maps of image pixel ``(x, y)`` on the feature grid.

    Args:
        explorer: The app's explorer.
        state: The analysed image.
        x: Pixel column, a whole number ``0 <= x < width`` (never rounded).
        y: Pixel row, a whole number ``0 <= y < height``.

    Returns:
        ``query`` ``[x, y]``, ``feature_cell`` ``[fx, fy]``, ``image_size`` and
        ``feature_size`` (``{"width", "height"}``), ``stride``, ``head`` (its registry name),
        ``predicted_class``, ``confidence``, ``maps`` (``{name: nested lists, rows first}``,
        ``maps[name][fy][fx]``, the head's maps in its order) and ``sums`` (``1 - sums[name]``
        is the share of the query's attention on the head's padding).

    Raises:
        ExplorerError: A coordinate missing, not a whole number or outside the image.
    """
    maps = explorer.attention(state, x, y)
    qx, qy = maps.query
    label = int(state.labels[qy, qx])
    names = [m.name for m in state.cache.head.maps]  # the head's order
    return {
        "query": [qx, qy],
        "feature_cell": list(maps.query_feature),
        "feature_size": size_dict(state.cache.feature_size),
        "stride": state.cache.stride,
        "head": state.cache.head.name,
        "image_size": size_dict(state.size),
        "predicted_class": explorer.model.class_names[label],
        "confidence": round(float(state.confidence[qy, qx]), 6),
        "maps": {n: maps[n].numpy().round(8).tolist() for n in names},
        "sums": {n: float(maps[n].sum()) for n in names},
    }


def compare_summary(
    comparison: Comparison,
    image: str | Path | Image.Image | np.ndarray | None,
    x: object,
    y: object,
    heads: object,
    image_means: bool = False,
    costs: bool = False,
) -> dict:
    """JSON-ready comparison of ``heads`` at image pixel ``(x, y)`` (the ``/compare`` endpoint).

    Each head runs once per image (its analysis kept under a key made of the pixels, in the
    server's bounded store); later calls, with any heads, reuse what was run, measured and
    averaged.

    Args:
        comparison: The app's comparison.
        image: An image file's path, or a decoded image.
        x: Pixel column, a whole number ``0 <= x < width`` (never rounded).
        y: Pixel row, a whole number ``0 <= y < height``.
        heads: 2 to 4 model names on offer (``Comparison.names``: the default models by head
            name, ``["isa", "nl", "cc", "da"]``), as a list or comma-separated.
        image_means: Also average the statistics over the image's query cells (bounded in
            time per head: ``image_statistics.queries`` says how many were done).
        costs: Also time each head's forward pass on this image (once per image and head,
            one run at a time per server, as the app's Compare tab).

    Returns:
        :func:`~isa_explorer.explorer.compare_panels.summary`: ``query``, ``image_size``,
        ``colour_scale_log10``, and per head (in the order asked) ``name``, ``head``,
        ``predicted_class``, ``confidence``, ``final_map``, ``statistics``,
        ``image_statistics`` (``None`` unless computed: ``image_means``), ``cost``
        (``None`` unless measured: ``costs``), ``feature_cell``, ``feature_size``, ``stride`` and ``maps``.

    Raises:
        ExplorerError: Unknown or too few/many heads, a bad image, a bad pixel.
    """
    from isa_explorer.explorer.compare_panels import summary

    names = comparison.check_names(heads)  # before any work: a bad request costs nothing
    if image is None:
        raise ExplorerError("no image received; send a PNG, JPEG or WebP file")
    checked = load_image_file(image) if isinstance(image, str | Path) else check_image(image)
    x, y = check_pixel(x, y, checked.rgb.shape[:2])
    key = image_key("api-compare", checked.rgb)
    kept = comparison.store.get(key)
    if isinstance(kept, CompareState):  # the same pixels: their analyses, costs, means reused
        comparison.keep(key, comparison.analysed(kept, names))
    else:
        comparison.load_checked(key, checked, "api", names)
    if costs:
        comparison.measure_costs(key, names=names)
    if image_means:
        comparison.image_averages(key, names=names)
    state = dataclasses.replace(comparison.state(key), chosen=tuple(names))  # this request's
    click = comparison.click(key, x, y, state)
    return summary(comparison, click)
