"""What a Compare click shows and saves: panels, statistics text, JSON and the download.

Every panel of a comparison is drawn at one display size (:data:`COMPARE_MAX_SIDE`, narrower
than the Explore tab's: up to four columns share the width). The final maps share one log
colour scale (:meth:`CompareClick.scale`, shown by :func:`colour_bar_html`); each head's step
maps keep their own scale, as in the Explore tab.
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from isa_explorer.explorer import map_stats, render
from isa_explorer.explorer.compare import Comparison
from isa_explorer.explorer.compare_state import CompareClick, CompareState, HeadClick

#: Longest side of the Compare view's panels.
COMPARE_MAX_SIDE = 512
#: Side of a drawn non-map value (DA's channel matrix, EMA's responsibilities).
VALUE_SIDE = 256


def display(state: CompareState) -> render.Display:
    """The geometry of the comparison's panels."""
    return render.Display.of(*state.size, max_side=COMPARE_MAX_SIDE)


def fmt(name: str, value: float) -> str:
    """One statistic as the view shows it (the browser test reads these back)."""
    if name == "cells_90":
        return f"{int(value)}"
    if name.startswith("share_") or name == "entropy_fraction":
        return f"{100 * value:.1f}%"
    return f"{value:.2f}"


def _drawn(state: CompareState, name: str, draw) -> np.ndarray:
    """An image drawn once per compared image (``state.view``), then reused by every click."""
    if name not in state.view:
        state.view[name] = np.asarray(draw())
    return state.view[name]


def _base(state: CompareState) -> np.ndarray:
    """The image at the panels' size."""
    return _drawn(state, "rgb", lambda: render.resize_rgb(state.rgb, display(state)))


def query_image(state: CompareState) -> np.ndarray:
    """The compared image at the panels' size, the query marked."""
    out = _base(state)
    return np.asarray(render.mark_query(out, *state.query, display(state)) if state.query else out)


def prediction_panel(comparison: Comparison, state: CompareState, name: str) -> np.ndarray:
    """A model's prediction over the image, query marked."""
    d = display(state)

    def draw() -> np.ndarray:
        palette = comparison.explorers[name].model.palette
        colours = render.label_image(state.analyses[name].labels, palette, d)
        return render.blend(_base(state), colours, 0.5)

    out = _drawn(state, f"prediction:{name}", draw)
    return np.asarray(render.mark_query(out, *state.query, d) if state.query else out)


def final_panel(
    comparison: Comparison, click: CompareClick, head: HeadClick, opacity: float = 0.7
) -> np.ndarray:
    """A model's final map on the comparison's shared log scale (FCN: "no attention")."""
    state, d = click.state, display(click.state)
    base = _base(state)
    if head.maps is None:
        im = render.blend(base, np.full_like(base, 128), 0.7)
        ImageDraw.Draw(im).text((8, 8), f"{head.head}: no attention", fill=(255, 255, 255))
        return np.asarray(render.mark_query(im, *click.query, d))
    lo, hi = click.scale()
    m = np.log10(np.maximum(head.maps[head.final_map].numpy().astype(np.float64), 1e-300))
    index = np.clip((m - lo) / (hi - lo), 0.0, 1.0)
    cells = state.analyses[head.name].cache.pixel_cells
    panel = render.heat_panel(base, index, cells, d, opacity, peak=1.0)
    return np.asarray(render.mark_query(panel, *click.query, d))


def step_panels(
    comparison: Comparison, click: CompareClick, head: HeadClick, opacity: float = 0.6
) -> list[tuple[np.ndarray, str]]:
    """A model's maps, each on its own scale, then its non-map values: ``(image, title)``
    (:func:`step_captions` says what each shows)."""
    if head.maps is None:
        return []
    state, d = click.state, display(click.state)
    cache = state.analyses[head.name].cache
    base, out = _base(state), []
    for info in cache.head.maps:
        panel = render.heat_panel(base, head.maps[info.name].numpy(), cache.pixel_cells, d, opacity)
        out.append((np.asarray(render.mark_query(panel, *click.query, d)), info.title))
    values, marks = [], None
    for info in reversed(cache.head.values):  # index values mark the matrix before them
        value = head.values[info.name]
        if not value.dtype.is_floating_point:
            marks = value.tolist()
            continue
        values.append((value_panel(value.numpy(), marks), info.title))
        marks = None
    return out + values[::-1]


def step_captions(comparison: Comparison, head: HeadClick) -> str:
    """Markdown: what each of a model's step panels shows (the query's strongest channels
    named where a head marks them)."""
    cls = comparison.explorers[head.name].model.head_class
    parts = [f"**{m.title}**: {m.caption}" for m in cls.maps]
    for info in cls.values:
        value = head.values.get(info.name)
        if value is not None and not value.dtype.is_floating_point:
            parts.append(f"**{info.title}** (marked): {', '.join(map(str, value.tolist()))}")
        else:
            once = "" if info.per_query else " (one per image)"
            parts.append(f"**{info.title}**{once}: {info.caption}")
    return "Its maps, each on its own scale: " + "; ".join(parts) + "." if parts else ""


def value_panel(value: np.ndarray, marks: list[int] | None = None) -> np.ndarray:
    """A matrix (``C x C``) or vector (``K``) as a heat image, scaled to its maximum; ``marks``
    (rows and columns of a matrix) outlined in cyan."""
    v = np.atleast_2d(np.asarray(value, dtype=np.float64))
    peak = float(v.max()) if v.size and v.max() > 0 else 1.0
    idx = (np.clip(v / peak, 0, 1) * 255).round().astype(np.uint8)
    rows, cols = v.shape
    cell = max(1, VALUE_SIDE // max(rows, cols))
    im = Image.fromarray(render.heat_lut()[idx]).resize(
        (cols * cell, max(rows * cell, 24)), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(im)
    for k in marks or []:
        draw.rectangle([0, k * cell, im.width - 1, (k + 1) * cell - 1], outline=(0, 230, 255))
        draw.rectangle([k * cell, 0, (k + 1) * cell - 1, im.height - 1], outline=(0, 230, 255))
    return np.asarray(im)


def column(comparison: Comparison, click: CompareClick, head: HeadClick) -> dict:
    """What a model's column shows for a click: ``title`` and ``statistics`` (markdown),
    ``final`` and ``prediction`` (images), ``steps`` (``(image, caption)`` pairs)."""
    return {
        "title": f"### {head.name}\n`{head.head}` head",
        "final": final_panel(comparison, click, head),
        "prediction": prediction_panel(comparison, click.state, head.name),
        "statistics": statistics_markdown(click.state, head)
        + ("\n\n" + step_captions(comparison, head) if head.maps is not None else ""),
        "steps": step_panels(comparison, click, head),
    }


def colour_bar_html(click: CompareClick) -> str:
    """The shared colour scale of the final maps, with its bounds."""
    lo, hi = click.scale()
    stops = ", ".join(f"rgb({r},{g},{b})" for r, g, b in render.heat_lut()[::32].tolist())
    return (
        '<div id="compare-scale" style="display:flex;align-items:center;gap:8px">'
        f"<small>share of the query's attention per cell, log scale: &le; 1e{lo:.1f}</small>"
        f'<div style="flex:1;height:14px;background:linear-gradient(to right, {stops})"></div>'
        f"<small>1e{hi:.1f} (the largest of any final map)</small></div>"
    )


def statistics_markdown(state: CompareState, head: HeadClick) -> str:
    """Under a model's column: its prediction, its final map's statistics at the query and
    over the image, and its forward pass's cost on this image."""
    lines = [f"Predicted **{html.escape(head.class_name)}** (p = {head.confidence:.2f})."]
    if head.maps is None:
        lines.append("\nNo attention: nothing to measure at the query.")
    else:
        averages = state.averages.get(head.name)
        lines += [
            "",
            f"Final map **{head.final_map}**:",
            "",
            "| statistic | this pixel | image mean |",
            "|---|---|---|",
        ]
        for key, value in head.statistics.items():
            mean = fmt(key, averages.means[key]) if averages is not None else "..."
            lines.append(f"| {map_stats.LABELS[key]} | {fmt(key, value)} | {mean} |")
        if averages is None:
            lines.append("\nImage means: being computed...")
        else:
            lines.append(
                f"\nImage means over {averages.done} of {averages.total} query cells "
                f"({averages.seconds:.1f} s{'' if averages.complete else ', a random sample'})."
            )
    cost = state.costs.get(head.name)
    if cost is None:
        lines.append("\nForward pass on this image: being measured...")
    elif cost["status"] != "ok":
        lines.append(f"\nForward pass on this image: not measured ({cost['reason']}).")
    else:
        mem = f"{cost['peak_mib']:.1f} MiB" if cost["peak_mib"] is not None else "< 1 MiB"
        lines.append(
            f"\nForward pass on this image: **{cost['ms']:.0f} ms** (median of {cost['runs']} run{'s' if cost['runs'] > 1 else ''}), "
            f"peak memory growth {mem}, on this server's CPU."
        )
    return "\n".join(lines)


def summary(comparison: Comparison, click: CompareClick, with_maps: bool = True) -> dict:
    """JSON-ready answer of a click (the ``/compare`` endpoint's, and the download's)."""
    state = click.state
    lo, hi = click.scale()
    out = {
        "query": list(click.query),
        "image_size": {"width": state.size[1], "height": state.size[0]},
        "source": state.source,
        "colour_scale_log10": [round(lo, 4), round(hi, 4)],
        "heads": [],
    }
    for head in click.heads:
        cache = state.analyses[head.name].cache
        item = {
            "name": head.name,
            "head": head.head,
            "predicted_class": head.class_name,
            "confidence": round(head.confidence, 6),
            "final_map": head.final_map,
            "statistics": {k: round(v, 6) for k, v in head.statistics.items()},
            "image_statistics": (
                state.averages[head.name].as_dict() if head.name in state.averages else None
            ),
            "cost": state.costs.get(head.name),
        }
        if head.maps is not None:
            item["feature_cell"] = list(head.maps.query_feature)
            item["feature_size"] = {"width": cache.feature_size[1], "height": cache.feature_size[0]}
            item["stride"] = cache.stride
            if with_maps:
                item["maps"] = {n: m.numpy().round(8).tolist() for n, m in head.maps.maps.items()}
        out["heads"].append(item)
    return out


def download(
    comparison: Comparison, click: CompareClick, folder: str | Path | None = None
) -> list[str]:
    """Write the click's maps (``.npz``: ``NAME/MAP`` float32 on the feature grid, and each
    non-map value) and its statistics (``.json``, :func:`summary` without the maps)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="isa-compare-"))
    x, y = click.query
    stem = folder / f"compare_x{x}_y{y}"
    arrays = {}
    for head in click.heads:
        for name, m in head.maps.maps.items() if head.maps is not None else ():
            arrays[f"{head.name}/{name}"] = m.numpy().astype(np.float32)
        for name, v in head.values.items():
            arrays[f"{head.name}/{name}"] = v.numpy()
    np.savez_compressed(stem.with_suffix(".npz"), **arrays)
    stem.with_suffix(".json").write_text(json.dumps(summary(comparison, click, False), indent=1))
    return [str(stem.with_suffix(".npz")), str(stem.with_suffix(".json"))]
