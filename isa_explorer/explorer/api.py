"""Stateless answers for programmatic clients (the app's ``predict`` / ``attention`` endpoints).

Each call takes an image; the analysed image is kept in the explorer's store under a key made
from its pixels, so repeated queries on the same image run the network once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from isa_explorer.explorer.handlers import Explorer, ExplorerError
from isa_explorer.explorer.images import ImageInputError, load_image_file, prepare_image
from isa_explorer.explorer.session import ImageState


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
    try:
        is_file = isinstance(image, str | Path)
        prepared = load_image_file(image) if is_file else prepare_image(image)
    except ImageInputError as err:
        raise ExplorerError(str(err)) from None
    rgb = prepared.rgb
    digest = hashlib.sha1(rgb.tobytes()).hexdigest()[:20]
    key = f"api:{rgb.shape[0]}x{rgb.shape[1]}:{digest}"
    state = explorer.store.get(key)
    if state is None:
        state = explorer.model.analyse(rgb)
        state.source = "api" + (f" -- {'; '.join(prepared.notes)}" if prepared.notes else "")
        explorer.store.put(key, state)
    return state


def predict_summary(explorer: Explorer, state: ImageState) -> dict:
    """JSON-ready description of a prediction: size, classes and the share of each."""
    names = explorer.model.class_names
    counts = np.bincount(state.labels.ravel(), minlength=len(names)) / state.labels.size
    return {
        "size": list(state.size),
        "class_names": names,
        "palette": explorer.model.palette.tolist(),
        "class_fractions": {n: round(float(f), 6) for n, f in zip(names, counts, strict=True)},
        "notes": state.source,
    }


def attention_summary(explorer: Explorer, state: ImageState, x: float, y: float) -> dict:
    """JSON-ready attention maps of image pixel ``(x, y)`` on the feature grid.

    Returns:
        ``query`` ``[x, y]``, ``feature_cell`` ``[fx, fy]``, ``feature_size`` ``[h, w]``,
        ``stride``, ``head``, ``predicted_class``, ``confidence``, ``maps`` (``{name: h x w
        nested lists}``: ``long``/``short``/``combined`` or ``dense``) and ``sums``.
    """
    if x is None or y is None:
        raise ExplorerError("give both pixel coordinates x and y")
    if float(x) != int(x) or float(y) != int(y):
        raise ExplorerError(f"pixel coordinates must be whole numbers, got ({x}, {y})")
    maps = explorer.attention(state, int(x), int(y))
    qx, qy = maps.query
    label = int(state.labels[qy, qx])
    return {
        "query": [qx, qy],
        "feature_cell": list(maps.query_feature),
        "feature_size": list(state.cache.feature_size),
        "stride": state.cache.stride,
        "head": state.cache.head,
        "image_size": list(state.size),
        "predicted_class": explorer.model.class_names[label],
        "confidence": round(float(state.confidence[qy, qx]), 6),
        "maps": {k: v.numpy().round(8).tolist() for k, v in maps.maps.items()},
        "sums": {k: float(v.sum()) for k, v in maps.maps.items()},
    }
