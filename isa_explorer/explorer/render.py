"""Drawing for the explorer: prediction overlays, attention heat maps, grid lines and legends.

All drawing happens on PIL images (arrays are accepted) at a *display* size (:class:`Display`):
small images are enlarged by an integer factor (crisp cells), large ones reduced to a longest
side of :data:`DISPLAY_MAX_SIDE`. A display pixel looks up its feature cell through index
arrays, so a map's panel costs a gather and a blend, no resampling.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

#: Longest side of the images drawn for the browser.
DISPLAY_MAX_SIDE = 1024
_BLOCK_RGB = (0, 230, 255)  # block boundaries and highlighted cells
_CELL_RGB = (200, 200, 200)  # feature-cell lines
#: Most reached cells outlined one by one (beyond, the heat map alone shows them).
_MAX_OUTLINED_CELLS = 256
ImageLike = Image.Image | np.ndarray


@cache
def heat_lut(name: str = "inferno") -> np.ndarray:
    """``(256, 3)`` uint8 colour lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.arange(256))[:, :3] * 255).round().astype(np.uint8)


@dataclass(frozen=True)
class Display:
    """Geometry of an ``(H, W)`` image drawn at display size.

    Attributes:
        height, width: Image size in pixels.
        scale: Display pixels per image pixel.
    """

    height: int
    width: int
    scale: float

    @classmethod
    def of(cls, height: int, width: int, max_side: int = DISPLAY_MAX_SIDE) -> Display:
        longest = max(height, width)
        scale = float(max(1, max_side // longest)) if longest <= max_side else max_side / longest
        return cls(height, width, scale)

    @property
    def size(self) -> tuple[int, int]:
        """``(dh, dw)`` display size."""
        return max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale))

    def to_image(self, x: float, y: float) -> tuple[int, int]:
        """Display pixel ``(x, y)`` -> image pixel (clamped to the image)."""
        ix, iy = int(x / self.scale), int(y / self.scale)
        return min(max(ix, 0), self.width - 1), min(max(iy, 0), self.height - 1)

    def to_display(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel ``(x, y)`` -> display position of its centre."""
        return (x + 0.5) * self.scale, (y + 0.5) * self.scale

    def pixel_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Image row of every display row and image column of every display column."""
        dh, dw = self.size
        rows = np.minimum((np.arange(dh) / self.scale).astype(np.int64), self.height - 1)
        cols = np.minimum((np.arange(dw) / self.scale).astype(np.int64), self.width - 1)
        return rows, cols


def resize_rgb(rgb: np.ndarray, display: Display) -> np.ndarray:
    """``(H, W, 3)`` image at display size (nearest when enlarging, area when reducing)."""
    dh, dw = display.size
    if (dh, dw) == rgb.shape[:2]:
        return rgb
    method = Image.Resampling.NEAREST if display.scale >= 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(rgb).resize((dw, dh), method))


def label_image(labels: np.ndarray, palette: np.ndarray, display: Display) -> np.ndarray:
    """``(dh, dw, 3)`` colours of the predicted classes at display size."""
    rows, cols = display.pixel_index()
    return palette[labels[rows][:, cols]]


def as_pil(image: ImageLike) -> Image.Image:
    """A PIL view of an ``(H, W, 3)`` uint8 array (PIL images pass through)."""
    return image if isinstance(image, Image.Image) else Image.fromarray(image)


def blend(base: ImageLike, top: ImageLike, opacity: float) -> Image.Image:
    """``base * (1 - opacity) + top * opacity`` of two RGB images (opacity clipped to [0, 1])."""
    return Image.blend(as_pil(base), as_pil(top), float(np.clip(opacity, 0.0, 1.0)))


def heat_panel(
    base: ImageLike,
    m: np.ndarray,
    pixel_cells: tuple[np.ndarray, np.ndarray],
    display: Display,
    opacity: float,
    peak: float | None = None,
) -> Image.Image:
    """A feature-grid map ``(h, w)`` as a heat map over ``base`` ``(dh, dw, 3)``, scaled to its
    maximum (or to ``peak``, clipped): every image pixel shows the value of its cell, the cell
    row of its row and column of its column in ``pixel_cells`` (``AttentionCache.pixel_cells``)."""
    base = as_pil(base)
    peak = float(m.max()) if peak is None else float(peak)
    m = np.minimum(m, peak)
    idx = np.zeros(m.shape, np.uint8) if peak <= 0 else (m / peak * 255).round().astype(np.uint8)
    rows, cols = display.pixel_index()  # image pixel of every display pixel
    cell_rows, cell_cols = pixel_cells
    heat = Image.fromarray(np.ascontiguousarray(idx[cell_rows[rows]][:, cell_cols[cols]]), "L")
    heat.putpalette(heat_lut().ravel().tolist())  # mode "P": cell value -> colour
    heat = heat.convert("RGB")
    if heat.size != base.size:
        heat = heat.resize(base.size, Image.Resampling.NEAREST)
    return blend(base, heat, opacity)


def draw_grid(
    panel: ImageLike,
    block_edges: tuple[Sequence[int], Sequence[int]],
    cell_edges: tuple[np.ndarray, np.ndarray],
    display: Display,
    reach: ArrayLike | None = None,
) -> Image.Image:
    """Draw a head's groups over a display image.

    Lines: the head's block edges (``Record.block_edges()``: rows and columns of feature cells
    where a group begins) and, when cells are at least 8 display pixels, the feature cells.
    ``reach``, an ``(h, w)`` bool mask of the cells a step reaches from the query
    (``AttentionMaps.reach``), is outlined: as one rectangle when it is one, else cell by cell
    up to :data:`_MAX_OUTLINED_CELLS` cells. ``cell_edges`` are the image pixel edges of the
    cells (``AttentionCache.cell_edges()``: ``(h + 1,)`` rows, ``(w + 1,)`` columns).
    """
    im = as_pil(panel).copy()
    draw = ImageDraw.Draw(im)
    dw, dh = im.size
    row_edges, col_edges = cell_edges
    cell = min(np.diff(row_edges).min(), np.diff(col_edges).min()) * display.scale

    def py(v: int) -> int:  # feature row -> display pixel of its top edge
        return round(row_edges[min(v, len(row_edges) - 1)] * display.scale)

    def px(v: int) -> int:  # feature column -> display pixel of its left edge
        return round(col_edges[min(v, len(col_edges) - 1)] * display.scale)

    def outline(r0: int, c0: int, r1: int, c1: int, width: int) -> None:  # cells [r0, r1)
        box = [px(c0), py(r0), max(px(c1) - 1, px(c0)), max(py(r1) - 1, py(r0))]
        draw.rectangle(box, outline=(255, 255, 255), width=width)

    lines = [(range(1, len(row_edges) - 1), range(1, len(col_edges) - 1), _CELL_RGB, 1)]
    lines = (lines if cell >= 8 else []) + [(*block_edges, _BLOCK_RGB, 2)]
    for rows, cols, colour, width in lines:
        for r in rows:
            draw.line([(0, py(r)), (dw, py(r))], fill=colour, width=width)
        for c in cols:
            draw.line([(px(c), 0), (px(c), dh)], fill=colour, width=width)
    if reach is not None and (mask := np.asarray(reach, dtype=bool)).any():
        rr, cc = np.nonzero(mask)
        r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
        if mask[r0:r1, c0:c1].all():  # one rectangle (a block, or everything)
            outline(r0, c0, r1, c1, 3)
        elif len(rr) <= _MAX_OUTLINED_CELLS:
            for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
                outline(r, c, r + 1, c + 1, 1)
    return im


def mark_query(panel: ImageLike, x: int, y: int, display: Display) -> Image.Image:
    """Draw a cross-hair ring at image pixel ``(x, y)``."""
    im = as_pil(panel).copy()
    draw = ImageDraw.Draw(im)
    cx, cy = display.to_display(x, y)
    r = max(6, round(min(im.size) / 40))
    for colour, width in (((0, 0, 0), 5), ((255, 255, 255), 2)):
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=width)
        draw.line([(cx - 2 * r, cy), (cx - r // 2, cy)], fill=colour, width=width)
        draw.line([(cx + r // 2, cy), (cx + 2 * r, cy)], fill=colour, width=width)
        draw.line([(cx, cy - 2 * r), (cx, cy - r // 2)], fill=colour, width=width)
        draw.line([(cx, cy + r // 2), (cx, cy + 2 * r)], fill=colour, width=width)
    return im


def legend_html(
    class_names: list[str], palette: np.ndarray, fractions: np.ndarray | None = None
) -> str:
    """Colour swatches with class names (and the share of pixels predicted, if given)."""
    items = []
    for k, name in enumerate(class_names):
        r, g, b = (int(v) for v in palette[k])
        share = "" if fractions is None else f" <small>{fractions[k]:.1%}</small>"
        items.append(
            f'<span class="isa-legend-item" style="display:inline-block;margin:2px 10px 2px 0">'
            f'<span style="display:inline-block;width:14px;height:14px;background:rgb({r},{g},{b});'
            f'border:1px solid #888;vertical-align:middle;margin-right:4px"></span>'
            f"{html.escape(name)}{share}</span>"
        )
    return '<div class="isa-legend">' + "".join(items) + "</div>"


def heat_overlay(base: ImageLike, heat: np.ndarray, opacity: float) -> Image.Image:
    """A ``[0, 1]`` map ``(h, w)`` of any size, smoothly resized, as a heat map over ``base``."""
    base = as_pil(base)
    idx = (np.clip(heat, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(idx, "L").resize(base.size, Image.Resampling.BILINEAR)
    im.putpalette(heat_lut().ravel().tolist())
    return blend(base, im.convert("RGB"), opacity)
