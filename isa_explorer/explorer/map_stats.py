"""Statistics of a head's final map at a query: how spread it is, how far it looks, and on what.

A final map (a head's :attr:`~isa_explorer.heads.protocol.Head.main_map`) is a distribution
``p`` over the cells of the head's padded feature grid (``(hp, wp)``, summing to one). For a
query cell ``q`` of the unpadded grid ``(h, w)``, :func:`map_statistics` gives:

* ``entropy_bits``: ``H(p) = -sum_j p_j log2 p_j``; ``entropy_fraction``: ``H(p) / log2(hp
  wp)``, its share of the largest entropy a map on that grid can have (0: one cell, 1: even);
* ``distance_px``: the mean attention distance, ``sum_j p_j |j - q|`` with cells ``stride``
  pixels apart (the nominal pixels per cell; as the mean attention distance of ViT);
* ``share_predicted``: the mass on cells predicted as the query's predicted class, and
  ``share_true`` the mass on cells whose true class is the query's true class (when truth
  is known: the example scenes); a cell's class is its centre pixel's;
* ``share_padding``: the mass on the padding cells (heads that pad: ISA's whole blocks);
* ``cells_90``: the fewest cells holding 90% of the mass (sorting each map: ``O(N log N)``).

:func:`image_statistics` averages them over every query cell of an image (or a random sample
of them once a time budget is spent), a chunk of queries at a time through the head's batched
:meth:`~isa_explorer.heads.protocol.Head.main_maps`: ``O(N)`` memory and time per query, never
the ``N x N`` affinity.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from isa_explorer.heads.protocol import Head, Record

#: Statistics of a map, in display order, with their labels.
LABELS = {
    "entropy_bits": "entropy (bits)",
    "entropy_fraction": "entropy / its maximum",
    "distance_px": "mean attention distance (px)",
    "share_predicted": "share on the query's predicted class",
    "share_true": "share on the query's true class",
    "share_padding": "share on padding",
    "cells_90": "cells holding 90% of the mass",
}
#: The mass ``cells_90`` counts cells up to (within float64 rounding).
MASS = 0.9
#: Queries per batch of :func:`image_statistics`.
CHUNK = 256


@dataclass(frozen=True)
class MapGrid:
    """What the statistics need of one image's grids.

    Attributes:
        size: ``(h, w)`` unpadded feature grid.
        padded: ``(hp, wp)`` grid the maps live on.
        offset: ``(top, left)`` of the unpadded grid in the padded one.
        stride: Pixels per feature cell.
        classes: ``(h, w)`` int64 predicted class of every cell.
        true_classes: ``(h, w)`` int64 true class of every cell, or ``None``.
    """

    size: tuple[int, int]
    padded: tuple[int, int]
    offset: tuple[int, int]
    stride: int
    classes: torch.Tensor
    true_classes: torch.Tensor | None = None

    @classmethod
    def of(
        cls,
        record: Record,
        stride: int,
        classes: np.ndarray | torch.Tensor,
        true_classes: np.ndarray | torch.Tensor | None = None,
    ) -> MapGrid:
        """The grid of a head's record, with per-cell classes ``(h, w)``."""

        def long(a):
            return None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.int64)

        return cls(
            tuple(record.size),
            tuple(record.padded),
            tuple(record.offset),
            int(stride),
            long(classes),
            long(true_classes),
        )

    @property
    def pads(self) -> bool:
        """Whether the maps live on a grid larger than the image's cells."""
        return self.padded != self.size


def map_statistics(
    maps: torch.Tensor,
    fx: torch.Tensor,
    fy: torch.Tensor,
    grid: MapGrid,
    query_class: torch.Tensor,
    query_true: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The statistics of ``Q`` final maps (module docstring), ``O(N)`` per query but the sort.

    Args:
        maps: ``(Q, hp, wp)`` maps of the queries, each summing to one.
        fx: ``(Q,)`` int64 query columns on the unpadded grid.
        fy: ``(Q,)`` int64 query rows.
        grid: The image's grids and cell classes.
        query_class: ``(Q,)`` predicted class of each query.
        query_true: ``(Q,)`` true class of each query (with ``grid.true_classes``).

    Returns:
        ``{name: (Q,) float64}`` in :data:`LABELS` order; ``share_true`` only with truth,
        ``share_padding`` only when the grid pads.
    """
    p = maps.to(torch.float64)
    q, (hp, wp), (top, left), (h, w) = p.shape[0], grid.padded, grid.offset, grid.size
    flat = p.reshape(q, hp * wp)  # (Q, N)
    entropy = -torch.special.xlogy(flat, flat).sum(1) / math.log(2)
    most = math.log2(hp * wp)
    out = {
        "entropy_bits": entropy,
        "entropy_fraction": entropy / most if most > 0 else torch.zeros_like(entropy),
    }
    # Distance of every padded cell to the query, in pixels: (Q, hp, wp).
    rows = torch.arange(hp, dtype=torch.float64)[None, :, None] - (fy + top)[:, None, None]
    cols = torch.arange(wp, dtype=torch.float64)[None, None, :] - (fx + left)[:, None, None]
    out["distance_px"] = (p * torch.hypot(rows, cols)).sum((1, 2)) * grid.stride
    inside = p[:, top : top + h, left : left + w]  # (Q, h, w): the image's cells

    def share(classes: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
        same = classes[None] == torch.as_tensor(of, dtype=torch.int64)[:, None, None]
        return (inside * same).sum((1, 2))

    out["share_predicted"] = share(grid.classes, query_class)
    if grid.true_classes is not None and query_true is not None:
        out["share_true"] = share(grid.true_classes, query_true)
    if grid.pads:
        out["share_padding"] = (1.0 - inside.sum((1, 2))).clamp_min(0.0)
    mass = torch.sort(flat, dim=1, descending=True).values.cumsum(1)  # (Q, N)
    out["cells_90"] = ((mass < MASS * flat.sum(1, keepdim=True) - 1e-12).sum(1) + 1).double()
    return out


@dataclass
class ImageStatistics:
    """The statistics of every query cell of an image (or of a random sample of them).

    Attributes:
        values: ``{name: (n,) float64}`` per query cell done, in the order done.
        cells: ``(n, 2)`` int64 ``(fx, fy)`` of those cells.
        total: Query cells of the image.
        seconds: Time taken.
    """

    values: dict[str, np.ndarray]
    cells: np.ndarray
    total: int
    seconds: float
    means: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.means = {k: float(v.mean()) if len(v) else math.nan for k, v in self.values.items()}

    @property
    def done(self) -> int:
        return len(self.cells)

    @property
    def complete(self) -> bool:
        return self.done == self.total

    def as_dict(self) -> dict:
        """JSON-ready: means, queries done of the total, seconds."""
        return {
            "means": {k: round(v, 6) for k, v in self.means.items()},
            "queries": self.done,
            "of_queries": self.total,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
        }


def image_statistics(
    head: type[Head],
    record: Record,
    grid: MapGrid,
    budget_s: float | None = None,
    chunk: int = CHUNK,
    seed: int = 0,
) -> ImageStatistics:
    """The statistics of every query cell's final map, batched through ``head.main_maps``.

    Queries run a chunk at a time in a random order (``seed``); once ``budget_s`` seconds
    have passed no further chunk starts, and the averages are those of a uniform random
    sample of the image's cells (:attr:`ImageStatistics.done` of :attr:`~ImageStatistics.total`).

    Args:
        head: The head's class.
        record: Its record of the image.
        grid: The image's grids and cell classes (:meth:`MapGrid.of`).
        budget_s: Seconds after which no chunk starts (``None``: every query).
        chunk: Queries per batch (memory ``chunk x N`` float64 maps).
        seed: Order of the queries.
    """
    h, w = grid.size
    order = torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))
    start, parts, cells = time.perf_counter(), [], []
    for i in range(0, h * w, chunk):
        if parts and budget_s is not None and time.perf_counter() - start > budget_s:
            break
        fy, fx = order[i : i + chunk] // w, order[i : i + chunk] % w
        with torch.inference_mode():
            maps = head.main_maps(record, fx, fy)
            true = grid.true_classes[fy, fx] if grid.true_classes is not None else None
            parts.append(map_statistics(maps, fx, fy, grid, grid.classes[fy, fx], true))
        cells.append(torch.stack([fx, fy], 1))
    values = {k: torch.cat([s[k] for s in parts]).numpy() for k in parts[0]} if parts else {}
    done = torch.cat(cells).numpy() if cells else np.zeros((0, 2), np.int64)
    return ImageStatistics(values, done, h * w, time.perf_counter() - start)
