"""What the Compare view keeps and answers: a session's compared image
(:class:`CompareState`) and a click's answer (:class:`CompareClick`, a :class:`HeadClick` per
model); :class:`~isa_explorer.explorer.compare.Comparison` makes them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from isa_explorer.attention import AttentionMaps
from isa_explorer.explorer import map_stats
from isa_explorer.explorer.store import ImageState
from isa_explorer.heads.protocol import Head

#: Decades of the shared colour scale of the final maps (below its top, darkest).
SCALE_DECADES = 3.0


@dataclass
class CompareState:
    """One image of a session and what each compared model made of it.

    Attributes:
        rgb: ``(H, W, 3)`` uint8.
        source: Where it came from, for the status line.
        truth: ``(H, W)`` true classes (example scenes), else ``None``.
        analyses: ``{model name: ImageState}`` (prediction and the attention record) of every
            model that ran on the image; a model chosen again later is not run again.
        chosen: The models shown, in order (a subset of ``analyses``).
        costs: ``{model name: cost dict}`` once measured (:meth:`Comparison.measure_costs`).
        averages: ``{model name: ImageStatistics}`` once computed.
        query: The clicked pixel ``(x, y)``, if any.
        view: Images drawn once per image (the panels' base, each prediction), shared by the
            states derived from this one (the same image).
    """

    rgb: np.ndarray
    source: str
    truth: np.ndarray | None = None
    analyses: dict[str, ImageState] = field(default_factory=dict)
    chosen: tuple[str, ...] = ()
    costs: dict[str, dict] = field(default_factory=dict)
    averages: dict[str, map_stats.ImageStatistics] = field(default_factory=dict)
    query: tuple[int, int] | None = None
    view: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

    @property
    def pending(self) -> list[str]:
        """The chosen models whose cost or whole-image means are still to come."""
        return [
            n
            for n in self.chosen
            if n not in self.costs
            or (self.analyses[n].cache is not None and n not in self.averages)
        ]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.truth is None else self.truth.nbytes
        extra += sum(v.nbytes for v in self.view.values() if isinstance(v, np.ndarray))
        return self.rgb.nbytes + extra + sum(a.nbytes for a in self.analyses.values())


@dataclass
class HeadClick:
    """One model's answer to a click.

    Attributes:
        name: The model's name in the comparison.
        head: Its head's registry name.
        final_map: The name of its final map (``None``: no attention, FCN).
        class_name: Its predicted class at the query; confidence: the probability.
        maps: Its maps of the query (``None`` without attention).
        statistics: ``{statistic: value}`` of its final map at the query.
        values: Its non-map quantities of the query (:meth:`Head.query_values`).
    """

    name: str
    head: str
    final_map: str | None
    class_name: str
    confidence: float
    maps: AttentionMaps | None
    statistics: dict[str, float]
    values: dict[str, torch.Tensor]


@dataclass
class CompareClick:
    """A click on the compared image: every model's answer, in the order chosen."""

    query: tuple[int, int]
    heads: list[HeadClick]
    state: CompareState

    def scale(self) -> tuple[float, float]:
        """``(lo, hi)`` log10 bounds of the shared colour scale of the final maps: ``hi`` the
        largest value of any final map, ``lo`` :data:`SCALE_DECADES` below it."""
        tops = [float(h.maps[h.final_map].max()) for h in self.heads if h.maps is not None]
        hi = float(np.log10(max(max(tops, default=1.0), 1e-300)))
        return hi - SCALE_DECADES, hi


def final_map(head: type[Head]) -> str | None:
    """The name of a head's final map: its ``main_map`` (``None`` without maps)."""
    return head.main_map or (head.maps[0].name if head.maps else None)
