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
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from isa_explorer.attention import AttentionMaps, query_maps
from isa_explorer.costs.measure import MiB, PeakMemory, time_runs
from isa_explorer.explorer import map_stats
from isa_explorer.explorer.compare_state import CompareClick, CompareState, HeadClick, final_map
from isa_explorer.explorer.efficiency import LIVE_BUDGET_SECONDS, LIVE_MIN_PEAK_MIB
from isa_explorer.explorer.served_model import ExplorerModel
from isa_explorer.explorer.service import Explorer, check_pixel
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
        if isinstance(names, str) and names.strip().startswith("["):  # a JSON list as text
            try:
                names = json.loads(names)
            except ValueError:
                raise ExplorerError(
                    f"heads {names!r} is not a JSON list; send a list of names, e.g. "
                    f"{self.default_choice()}, or a comma-separated string"
                ) from None
        elif isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise ExplorerError(
                f"heads must be a list of names or a comma-separated string, e.g. "
                f"{self.default_choice()}; got {names!r}"
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
        for n in names:  # each model must know the synthetic scenes' classes
            if not self.explorers[n].model.is_synthetic:
                raise ExplorerError(
                    f"examples are synthetic context scenes, which {n!r} was not trained on; "
                    "upload an image instead"
                )
        rgb, truth = self.explorers[names[0]].example_scene(index, context)
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
        """Run every chosen model once on a checked image (their forward passes and captures)
        and make it the session's image; a failure leaves the session's last image as it was."""
        notes = "; ".join(checked.notes)
        state = CompareState(checked.rgb, source + (f" -- {notes}" if notes else ""), truth)
        state = self.analysed(state, self.check_names(names))
        self.store.put(key, state)
        return state

    def analysed(self, state: CompareState, names: list[str]) -> CompareState:
        """``state`` with ``names`` chosen, the models not yet run on its image run once."""
        new = {
            n: self.explorers[n].model.analyse(state.rgb) for n in names if n not in state.analyses
        }
        return dataclasses.replace(state, analyses={**state.analyses, **new}, chosen=tuple(names))

    def choose(self, key: str, names: list[str]) -> CompareState:
        """Make ``names`` the compared models of the session's image, running the new ones."""
        return self.keep(key, self.analysed(self.state(key), self.check_names(names)))

    def keep(self, key: str, state: CompareState) -> CompareState:
        """Store ``state`` as the session's; when the session holds the same image, what it
        holds (analyses, costs, means, query) stays beside ``state``'s analyses and choice."""

        def merge(current: CompareState) -> CompareState:
            if not isinstance(current, CompareState) or current.rgb is not state.rgb:
                return state
            analyses = {**state.analyses, **current.analyses}
            return dataclasses.replace(current, analyses=analyses, chosen=state.chosen)

        kept = self.store.update(key, merge)
        if kept is None:  # nothing stored under key (evicted meanwhile)
            self.store.put(key, state)
        return kept or state

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
    def click(
        self, key: str, x: object, y: object, state: CompareState | None = None
    ) -> CompareClick:
        """Every chosen model's maps and statistics at image pixel ``(x, y)``, from the cached
        records (no forward pass). Coordinates are checked as the Explore tab checks them.

        Args:
            key: The session.
            x: Pixel column; y: pixel row (whole numbers inside the image).
            state: Answer for this state of the session (its chosen models), not the one
                stored now (another request may have chosen others meanwhile).
        """
        state = state if state is not None else self.state(key)
        x, y = check_pixel(x, y, state.size)
        out = [self._head_click(n, state, state.analyses[n], x, y) for n in state.chosen]

        def moved(current: CompareState) -> CompareState | None:  # its costs and means kept
            return dataclasses.replace(current, query=(x, y)) if current.rgb is state.rgb else None

        clicked = self.store.update(key, moved) or dataclasses.replace(state, query=(x, y))
        return CompareClick((x, y), out, dataclasses.replace(clicked, chosen=state.chosen))

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
            final_map(head),
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
        final = maps.padded[final_map(head)][None]  # (1, hp, wp)
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
    def measure_costs(
        self, key: str, budget_s: float = LIVE_BUDGET_SECONDS, names: list[str] | None = None
    ) -> CompareState:
        """Time each chosen model's forward pass on the session's image, once per image and
        model, one run at a time per server; once ``budget_s`` seconds have passed (one model is
        always measured), the models left are reported as not measured, and a model whose
        pass fails is reported with its error. Peak memory is the growth of this process's
        resident memory (approximate, as the Efficiency tab's live run). ``names``: these
        models rather than the chosen ones."""
        with _cost_lock:  # the state and the budget are read once the server's last run ended
            state, costs = self.state(key), {}
            start = time.perf_counter()
            for name in state.chosen if names is None else names:
                if name in state.costs:
                    continue
                if costs and time.perf_counter() - start > budget_s:
                    costs[name] = {"status": "skipped", "reason": f"time budget {budget_s:g} s"}
                    continue
                try:
                    costs[name] = forward_cost(self.explorers[name].model, state.rgb)
                except Exception as err:  # e.g. out of memory: said, and the others go on
                    log.exception("measuring %s failed", name)
                    costs[name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
            return self._merge(key, state, "costs", costs)

    def image_averages(
        self, key: str, budget_s: float = AVERAGE_BUDGET_S, names: list[str] | None = None
    ) -> CompareState:
        """The statistics of every query cell of the session's image, per chosen model with
        maps (``budget_s`` seconds each, then a random sample of the cells); ``names``: these
        models rather than the chosen ones."""
        state, averages = self.state(key), {}
        for name in state.chosen if names is None else names:
            cache = state.analyses[name].cache
            if name in state.averages or cache is None:
                continue
            averages[name] = map_stats.image_statistics(
                cache.head, cache.record, self.grid(name, state), budget_s
            )
        return self._merge(key, state, "averages", averages)

    def _merge(self, key: str, state: CompareState, name: str, new: dict) -> CompareState:
        """Add ``new`` to the ``name`` field of the session's current state (what a click or
        another step stored meanwhile kept), unless the session moved to another image."""

        def merge(current: CompareState) -> CompareState | None:
            if current.rgb is not state.rgb:
                return None
            return dataclasses.replace(current, **{name: {**getattr(current, name), **new}})

        merged = self.store.update(key, merge)
        return merged or dataclasses.replace(state, **{name: {**getattr(state, name), **new}})


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
