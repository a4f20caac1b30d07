"""``isa-explorer bench attention``'s runner: every case in a fresh process.

The cases and their skip rules are :func:`~isa_explorer.costs.cases.run_cases`'s; each case runs
in a new process (:func:`~isa_explorer.bench.worker.run_worker`), so its peak memory is its own.
"""

from __future__ import annotations

from typing import Any

import torch

from isa_explorer.bench.worker import run_worker
from isa_explorer.costs.cases import measure_case, run_cases


def _fresh(spec: dict[str, Any], limit: float | None) -> dict[str, Any]:
    return run_worker("attention", {**spec, "threads": torch.get_num_threads()}, limit)


def run_benchmark(*args: Any, subprocess: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
    """:func:`~isa_explorer.costs.cases.run_cases` (same arguments), each case in a fresh
    process unless ``subprocess=False`` (then in this one: its peak memory is approximate)."""
    return run_cases(*args, measure=_fresh if subprocess else None, **kwargs)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case from a JSON spec, in a fresh process (:mod:`~isa_explorer.bench.worker`)."""
    spec = dict(spec)
    threads = spec.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    spec["size"] = tuple(spec["size"])
    return measure_case(**spec)
