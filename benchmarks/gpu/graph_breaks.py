"""What ``torch.compile`` makes of a function: its graphs, graph breaks and recompiles.

:func:`graph_breaks` runs ``torch._dynamo.explain`` (graph capture only, no code generation,
so it is quick on any device); :func:`graphs_over_sizes` compiles with the ``eager`` backend
(capture only) and counts the graphs dynamo makes as the input size changes. Both are used by
the tests and by the GPU check (``benchmarks/gpu/run.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.utils import counters


def _reason(r: Any) -> str:
    """One graph break as ``"reason (file:line)"`` of the user frame it happened in."""
    stack = getattr(r, "user_stack", None) or []
    where = f" ({stack[-1].filename}:{stack[-1].lineno})" if stack else ""
    return f"{getattr(r, 'reason', r)}{where}"


def graph_breaks(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Graphs and graph breaks of ``fn(*args, **kwargs)`` under ``torch.compile``.

    Runs ``fn`` once through ``torch._dynamo.explain`` after a ``torch._dynamo.reset()``
    (the caller picks the mode: ``torch.no_grad()`` for inference, ``model.train()``).

    Returns:
        ``{"graphs", "graph_breaks", "ops", "break_reasons"}``: the counts and one
        ``"reason (file:line)"`` string per break.
    """
    torch._dynamo.reset()
    out = torch._dynamo.explain(fn)(*args, **kwargs)
    return {
        "graphs": int(out.graph_count),
        "graph_breaks": int(out.graph_break_count),
        "ops": int(out.op_count),
        "break_reasons": [_reason(r) for r in out.break_reasons],
    }


def graphs_over_sizes(
    module: torch.nn.Module, inputs: Sequence[torch.Tensor]
) -> dict[str, list[Any]]:
    """Graphs dynamo has captured after each input of ``inputs`` (``eager`` backend).

    A new size fails the shape guards of the first graph; dynamo then compiles a graph with
    dynamic sizes, which guards in turn on the branches the code takes on them.

    Returns:
        ``{"sizes": [[H, W], ...], "graphs": [count after each input, ...]}``.
    """
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, backend="eager")
    graphs = []
    with torch.no_grad():
        for x in inputs:
            compiled(x)
            graphs.append(int(counters["stats"]["unique_graphs"]))
    torch._dynamo.reset()
    return {"sizes": [list(x.shape[-2:]) for x in inputs], "graphs": graphs}
