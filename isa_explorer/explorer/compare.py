"""The Compare view's server side: one image, two to four heads, one click, free of any UI.

:class:`Comparison` runs each chosen model once on an image (:meth:`ExplorerModel.analyse`,
the same capture as the Explore tab) and keeps the analyses per session, so a click only
reads the cached records: every head's maps (:func:`~isa_explorer.attention.query_maps`),
the statistics of its final map (:mod:`~isa_explorer.explorer.map_stats`) and the panels,
the final maps on one shared colour scale. After the first analysis, two slower steps fill in
what a click then also shows: :meth:`Comparison.measure_costs` (each head's forward pass on
this image, timed on this machine) and :meth:`Comparison.image_averages` (the statistics
averaged over the image's query cells), both bounded in time.

The models on offer (:func:`available_models`): the embedded default model of every head
(named by its head), the zoo models already in the cache, and a ``--checkpoint`` model.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from isa_explorer.attention import AttentionMaps, query_maps
from isa_explorer.costs.measure import MiB, PeakMemory, time_runs
from isa_explorer.data.synthetic import generate
from isa_explorer.explorer import map_stats
from isa_explorer.explorer.efficiency import LIVE_BUDGET_SECONDS, LIVE_MIN_PEAK_MIB
from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.explorer.service import CONTEXTS, EXAMPLE_SEED, Explorer, check_pixel
from isa_explorer.explorer.store import ImageState, SessionStore
from isa_explorer.explorer.uploads import CheckedImage, ExplorerError, check_image, load_image_file
from isa_explorer.pretrained import DEFAULT_MODELS_DIR, default_heads
from isa_explorer.zoo.cache import cached_names

#: How many heads a comparison shows.
MIN_HEADS, MAX_HEADS = 2, 4
#: The heads chosen when the view opens.
DEFAULT_CHOICE = ("isa", "nl", "cc", "da")
#: Seconds of the whole-image averages per head, after which a random sample of cells counts.
AVERAGE_BUDGET_S = 15.0
#: Decades of the shared colour scale of the final maps (below its top, darkest).
SCALE_DECADES = 3.0
#: A head's forward pass under this many seconds is timed three more times (median).
COST_REPEAT_S = 1.0

_cost_lock = threading.Lock()
log = logging.getLogger("isa_explorer.app")


def available_models(checkpoint: str | Path | None = None) -> dict[str, str | Path]:
    """The models a comparison offers, by name: the embedded default model of every head
    (named by its head, ``isa`` first), the zoo models already in the cache, and
    ``checkpoint`` under its own name."""
    out: dict[str, str | Path] = {h: DEFAULT_MODELS_DIR / h for h in default_heads()}
    out.update({name: name for name in cached_names()})
    if checkpoint is not None:
        out.setdefault(Path(str(checkpoint)).name or str(checkpoint), checkpoint)
    return out


@dataclass
class CompareState:
    """One image of a session and what each compared model made of it.

    Attributes:
        rgb: ``(H, W, 3)`` uint8.
        source: Where it came from, for the status line.
        truth: ``(H, W)`` true classes (example scenes), else ``None``.
        analyses: ``{model name: ImageState}`` (prediction and the attention record).
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
    costs: dict[str, dict] = field(default_factory=dict)
    averages: dict[str, map_stats.ImageStatistics] = field(default_factory=dict)
    query: tuple[int, int] | None = None
    view: dict = field(default_factory=dict, repr=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

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


class Comparison:
    """Several models on one image per session, and their answers to clicks.

    Args:
        models: ``{name: model directory, zoo name or ExplorerModel}``; default
            :func:`available_models`. Weights load on first use.
        store: Where the sessions' images are kept (shared with the Explore tab).
    """

    def __init__(
        self,
        models: dict[str, str | Path | ExplorerModel] | None = None,
        store: SessionStore | None = None,
    ):
        models = available_models() if models is None else models
        self.explorers: dict[str, Explorer] = {}
        for name, m in models.items():
            try:
                self.explorers[name] = Explorer(
                    m if isinstance(m, ExplorerModel) else ExplorerModel(m)
                )
            except (OSError, ValueError) as err:  # a damaged cache entry: not on offer
                log.warning("the Compare view leaves out %s: %s", name, err)
        self.store = store if store is not None else SessionStore()

    @property
    def names(self) -> list[str]:
        """The models on offer."""
        return list(self.explorers)

    def default_choice(self) -> list[str]:
        """:data:`DEFAULT_CHOICE` where offered, else the first models on offer."""
        chosen = [n for n in DEFAULT_CHOICE if n in self.explorers]
        return chosen or self.names[:MAX_HEADS]

    def check_names(self, names: object) -> list[str]:
        """The chosen model names, checked: 2 to 4 distinct names on offer."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ExplorerError(
                f"heads must be a list of names, e.g. {list(self.default_choice())}; got {names!r}"
            )
        unknown = [n for n in names if n not in self.explorers]
        if unknown:
            raise ExplorerError(
                f"unknown head {unknown[0]!r}: choose from {', '.join(self.explorers)}"
            )
        if len(set(names)) != len(names):
            raise ExplorerError(f"each head once, please: {list(names)} repeats a name")
        if not MIN_HEADS <= len(names) <= MAX_HEADS:
            raise ExplorerError(
                f"choose {MIN_HEADS} to {MAX_HEADS} heads to compare, got {len(names)}"
            )
        return list(names)

    # -- images ---------------------------------------------------------------------------
    def example(
        self, index: int, context: str, names: list[str]
    ) -> tuple[CheckedImage, np.ndarray]:
        """Example scene ``index`` and its true classes, at the first chosen model's size."""
        first = self.explorers[names[0]]
        for n in names:  # each model must know the synthetic scenes' classes
            if not self.explorers[n].model.is_synthetic:
                raise ExplorerError(
                    f"examples are synthetic context scenes, which {n!r} was not trained on; "
                    "upload an image instead"
                )
        first.example_image(index, context)  # checks index and context, with their messages
        rgb, truth = generate(EXAMPLE_SEED, int(index), first.model.train_size, CONTEXTS[context])
        return CheckedImage(rgb), truth.astype(np.uint8)

    def load_example(self, key: str, index: int, context: str, names: list[str]) -> CompareState:
        """Analyse example scene ``index`` with the chosen models for session ``key``."""
        names = self.check_names(names)
        checked, truth = self.example(index, context, names)
        return self.load_checked(key, checked, f"example {int(index)} ({context})", names, truth)

    def load_file(self, key: str, path: str | Path | None, names: list[str]) -> CompareState:
        """Analyse an uploaded file with the chosen models."""
        names = self.check_names(names)
        if path is None:
            raise ExplorerError("no file received; upload a PNG, JPEG or WebP image")
        return self.load_checked(key, load_image_file(path), f"upload {Path(path).name}", names)

    def load_image(
        self, key: str, image: object, names: list[str], source: str = "image"
    ) -> CompareState:
        """Analyse a PIL image or array with the chosen models."""
        return self.load_checked(key, check_image(image), source, self.check_names(names))

    def load_checked(
        self,
        key: str,
        checked: CheckedImage,
        source: str,
        names: list[str],
        truth: np.ndarray | None = None,
    ) -> CompareState:
        """Run every chosen model once on a checked image: their forward passes and captures."""
        notes = "; ".join(checked.notes)
        state = CompareState(checked.rgb, source + (f" -- {notes}" if notes else ""), truth)
        self.store.discard(key)  # the old image goes before the new one is analysed
        return self.choose(key, names, state)

    def choose(self, key: str, names: list[str], state: CompareState | None = None) -> CompareState:
        """Make ``names`` the compared models of the session's image, analysing the new ones."""
        names = self.check_names(names)
        state = state if state is not None else self.state(key)
        analyses = {
            n: state.analyses.get(n) or self.explorers[n].model.analyse(state.rgb) for n in names
        }
        state = dataclasses.replace(
            state,
            analyses=analyses,
            costs={n: c for n, c in state.costs.items() if n in analyses},
            averages={n: a for n, a in state.averages.items() if n in analyses},
        )
        self.store.put(key, state)
        return state

    def state(self, key: str) -> CompareState:
        """The session's compared image; raises if none is loaded (or it expired)."""
        state = self.store.get(key)
        if not isinstance(state, CompareState):
            raise ExplorerError(
                "no image loaded yet (or it was dropped from the server's memory after a while): "
                "pick an example or upload an image first"
            )
        return state

    # -- clicks ---------------------------------------------------------------------------
    def click(self, key: str, x: object, y: object) -> CompareClick:
        """Every compared model's maps and statistics at image pixel ``(x, y)``, from the cached
        records (no forward pass). Coordinates are checked as the Explore tab checks them."""
        state = self.state(key)
        x, y = check_pixel(x, y, state.size)
        out = [self._head_click(n, state, a, x, y) for n, a in state.analyses.items()]
        clicked = dataclasses.replace(state, query=(x, y))
        self.store.put(key, clicked, replacing=state)
        return CompareClick((x, y), out, clicked)

    def _head_click(
        self, name: str, state: CompareState, analysis: ImageState, x: int, y: int
    ) -> HeadClick:
        model = self.explorers[name].model
        head = model.head_class
        maps, stats, values = None, {}, {}
        if analysis.cache is not None:  # else no attention (FCN): its prediction only
            maps = query_maps(analysis.cache, x, y)
            stats = self.statistics(name, state, maps)
            values = head.query_values(analysis.cache.record, *maps.query_feature)
        label = int(analysis.labels[y, x])
        return HeadClick(
            name,
            head.name,
            head.main_map or (head.maps[0].name if head.maps else None),
            model.class_names[label],
            float(analysis.confidence[y, x]),
            maps,
            stats,
            values,
        )

    def grid(self, name: str, state: CompareState) -> map_stats.MapGrid:
        """The statistics' grid of a model's analysis: cell classes from its centre pixels."""
        cache = state.analyses[name].cache
        rows, cols = cache.cell_centres()
        truth = None if state.truth is None else state.truth[rows][:, cols]
        labels = state.analyses[name].labels[rows][:, cols]
        return map_stats.MapGrid.of(cache.record, cache.stride, labels, truth)

    def statistics(self, name: str, state: CompareState, maps: AttentionMaps) -> dict[str, float]:
        """The statistics of a model's final map at a clicked pixel (the query pixel's own
        predicted and true class)."""
        analysis = state.analyses[name]
        head = analysis.cache.head
        (x, y), (fx, fy) = maps.query, maps.query_feature
        final = maps.padded[head.main_map or head.maps[0].name][None]  # (1, hp, wp)
        true = None if state.truth is None else torch.tensor([int(state.truth[y, x])])
        stats = map_stats.map_statistics(
            final,
            torch.tensor([fx]),
            torch.tensor([fy]),
            self.grid(name, state),
            torch.tensor([int(analysis.labels[y, x])]),
            true,
        )
        return {k: float(v[0]) for k, v in stats.items()}

    # -- the slower steps after an analysis -----------------------------------------------
    def measure_costs(self, key: str, budget_s: float = LIVE_BUDGET_SECONDS) -> CompareState:
        """Time each compared model's forward pass on the session's image, once per image and
        model, one run at a time per server; once ``budget_s`` seconds have passed (one model is
        always measured), the models left are reported as not measured. Peak memory is the growth of this process's
        resident memory (approximate, as the Efficiency tab's live run)."""
        state = self.state(key)
        costs = dict(state.costs)
        start, measured = time.perf_counter(), False
        with _cost_lock:
            for name in state.analyses:
                if name in costs:
                    continue
                if measured and time.perf_counter() - start > budget_s:
                    costs[name] = {"status": "skipped", "reason": f"time budget {budget_s:g} s"}
                    continue
                costs[name] = forward_cost(self.explorers[name].model, state.rgb)
                measured = True
        return self._update(key, state, costs=costs)

    def image_averages(self, key: str, budget_s: float = AVERAGE_BUDGET_S) -> CompareState:
        """The statistics of every query cell of the session's image, per model with maps
        (``budget_s`` seconds each, then a random sample of the cells)."""
        state = self.state(key)
        averages = dict(state.averages)
        for name, analysis in state.analyses.items():
            if name in averages or analysis.cache is None:
                continue
            cache = analysis.cache
            averages[name] = map_stats.image_statistics(
                cache.head, cache.record, self.grid(name, state), budget_s
            )
        return self._update(key, state, averages=averages)

    def _update(self, key: str, state: CompareState, **changes) -> CompareState:
        """Store ``state`` with ``changes`` unless the session moved to another image."""
        current = self.store.get(key)
        if isinstance(current, CompareState) and current.rgb is state.rgb:
            state = dataclasses.replace(current, **changes)
            self.store.put(key, state, replacing=current)
            return state
        return dataclasses.replace(state, **changes)


def forward_cost(model: ExplorerModel, rgb: np.ndarray) -> dict:
    """Time and peak memory of ``model``'s forward pass (its prediction) on ``rgb``, now.

    The first run gives the peak memory (and the time of a pass over :data:`COST_REPEAT_S`
    seconds); a faster pass is the median of three more runs (the first warmed it up).
    """
    net = model.model
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]  # (1, 3, H, W)

    def run() -> None:
        with torch.inference_mode():
            net.predict(net.normalize(x.to(model.device)))

    peak = PeakMemory(model.device).start()
    first = time_runs(run, 1, 0, model.device)
    grown = peak.growth()
    times = first if first[0] >= COST_REPEAT_S else time_runs(run, 3, 0, model.device)
    mib = grown / MiB
    return {
        "status": "ok",
        "ms": round(1000 * float(np.median(times)), 1),
        "runs": len(times),
        "peak_mib": round(mib, 1) if mib >= LIVE_MIN_PEAK_MIB else None,
        "memory": peak.method,
    }
