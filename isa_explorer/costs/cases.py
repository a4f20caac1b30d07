"""Memory, time and FLOPs of the attention modules as the resolution grows, case by case.

An *attention module* (:func:`~isa_explorer.costs.analytic.modules`) is a registered head's
context step without its ``in_conv``: ``(1, C, h, w) -> (1, C, h, w)``, ``h x w`` the input
resolution at 1/8. :func:`run_cases` measures every (resolution, module, pass) predicted to
fit, in this process unless given another way (:mod:`isa_explorer.bench.runner`: a fresh
process per case), beside FLOPs counted on the meta device
(:func:`~isa_explorer.costs.flops.count_flops`) and analytic costs; a case predicted to exceed
the memory, ``max_memory`` or ``max_seconds`` is ``"skipped"`` with the prediction.
:data:`COMMITTED_RESULTS` is the committed CPU run.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from isa_explorer.costs.analytic import PASSES, analytic_costs, attention_module
from isa_explorer.costs.flops import backward, count_flops
from isa_explorer.costs.measure import MiB, PeakMemory, available_memory, median_ms, time_runs
from isa_explorer.heads.isa import auto_group

#: The committed CPU measurement, package data (``isa_explorer/assets/results/``), for the app
#: and notebooks: it is there in a non-editable install too.
COMMITTED_RESULTS = Path(
    str(importlib.resources.files("isa_explorer") / "assets" / "results" / "benchmark_cpu.json")
)
#: Input resolutions ``(H, W)``: feature maps 32x64 .. 256x512 at output stride 8.
RESOLUTIONS = ((256, 512), (512, 1024), (1024, 2048), (2048, 4096))
OUTPUT_STRIDE = 8
#: Seconds per FLOP assumed for time predictions (20 GFLOP/s) until a module's case has run
#: faster; predictions use the fastest rate measured so far for the module and pass.
DEFAULT_RATE = 0.05e-9
#: ``measure(spec, seconds)``: one case's result from its :func:`measure_case` arguments and a
#: time limit (``None``: none).
Measure = Callable[[dict[str, Any], float | None], dict[str, Any]]


def measure_case(
    module: str,
    size: tuple[int, int],
    passes: str = "forward",
    runs: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    channels: int = 512,
    isa_channels: int = 256,
    group: int | tuple[int, int] = 8,
) -> dict[str, Any]:
    """Time and peak memory growth of one case in this process (see :func:`run_cases`).

    ``forward`` runs in eval mode under ``inference_mode``; ``forward+backward`` in training
    mode with gradients for the input and the parameters (a module whose output needs none,
    EMA's, runs its training forward: :func:`~isa_explorer.costs.flops.backward`).
    """
    if passes not in PASSES:
        raise ValueError(f"unknown pass {passes!r}: choose from {', '.join(PASSES)}")
    torch.manual_seed(0)
    m = attention_module(module, channels, isa_channels, group).to(device)
    x = torch.randn(1, channels, *size, device=device)  # (1, C, h, w)
    if passes == "forward":
        m.eval()
        mem = PeakMemory(device).start()
        with torch.inference_mode():
            times = time_runs(lambda: m(x), runs, warmup, device)
    else:
        m.train()
        x.requires_grad_()
        grad = torch.randn(1, channels, *size, device=device)  # d loss / d output
        mem = PeakMemory(device).start()
        times = time_runs(lambda: backward(m(x), grad), runs, warmup, device)
    return {
        "median_ms": round(median_ms(times), 2),
        "times_ms": [round(1000 * t, 2) for t in times],
        "peak_mib": round(mem.growth() / MiB, 1),
        "memory_method": mem.method,
        "status": "ok",
    }


def _resolve_group(group: int | str, h: int, w: int) -> int:
    if group == "auto":
        return auto_group(h, w)
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    raise ValueError(f"group must be a positive integer or 'auto', got {group!r}")


def run_cases(
    resolutions: Sequence[tuple[int, int]] = RESOLUTIONS,
    modules: Sequence[str] | None = None,
    passes: Sequence[str] = PASSES,
    group: int | str = 8,
    device: str = "cpu",
    max_memory: float | None = None,
    max_seconds: float | None = None,
    runs: int = 3,
    warmup: int = 1,
    channels: int = 512,
    isa_channels: int = 256,
    log: Callable[[dict[str, Any]], Any] | None = None,
    measure: Measure | None = None,
) -> list[dict[str, Any]]:
    """Measure every (resolution, module, pass) that is predicted to fit.

    Args:
        resolutions: Input image sizes ``(H, W)``; feature maps are ``(H / 8, W / 8)``.
        modules: Names of :func:`~isa_explorer.costs.analytic.modules` (default: all).
        passes: ``"forward"`` and/or ``"forward+backward"``.
        group: Block side of grouping heads, or ``"auto"`` (ISA's optimal side per size).
        device: ``"cpu"`` or ``"cuda"``.
        max_memory: Bytes a case may use (default: the memory available now, less 15%).
        max_seconds: Longest predicted time of one pass: counted FLOPs times the fastest
            rate measured so far for the module and pass, or :data:`DEFAULT_RATE` (default:
            no limit).
        runs: Timed runs per case (fewer when ``max_seconds`` would be exceeded; at least 1).
        warmup: Untimed runs before timing.
        channels: Head channels ``C``; isa_channels: query/key channels.
        log: Callable given each finished result (e.g. ``print``-based progress).
        measure: How a case is measured (default: :func:`measure_case` in this process).

    Returns:
        One dict per case: ``module``, ``pass``, ``resolution``, ``feature``, ``group``,
        ``status`` (``ok`` / ``skipped`` / ``failed`` / ``timeout``), ``reason``, measured
        ``median_ms``, ``times_ms``, ``peak_mib``, counted ``flops`` and ``analytic``.
    """
    budget = 0.85 * available_memory(device)
    if max_memory is not None:
        budget = min(budget, max_memory)
    shape = dict(channels=channels, isa_channels=isa_channels)
    rate: dict[tuple[str, str], float] = {}  # measured seconds per FLOP of (module, pass)
    results = []
    for res_h, res_w in resolutions:
        h, w = res_h // OUTPUT_STRIDE, res_w // OUTPUT_STRIDE
        g = _resolve_group(group, h, w)
        costs = analytic_costs(h, w, g, **shape)
        for module, p in ((m, p) for m in modules or costs for p in passes):
            cost = costs[module]
            r = {  # the record before the case runs: sizes, analytic costs, counted FLOPs
                "module": module,
                "pass": p,
                "resolution": [res_h, res_w],
                "feature": [h, w],
                "positions": h * w,
                "group": g if cost["group"] else None,
                "analytic": {
                    "flops": cost["flops"][p],
                    "attention_flops_forward": cost["attention_flops"],
                    "affinity_mib": round(cost["affinity_bytes"] / MiB, 2),
                    "predicted_peak_mib": round(cost["predicted_peak_bytes"][p] / MiB, 1),
                },
                "flops": count_flops(module, (h, w), p, group=g, **shape),
            }
            seconds = r["flops"] * rate.get((module, p), DEFAULT_RATE)
            r["predicted_seconds"] = round(seconds, 2)
            peak = cost["predicted_peak_bytes"][p]
            if peak > budget:
                r["status"] = "skipped"
                r["reason"] = (
                    f"predicted peak {peak / 2**30:.1f} GiB > memory budget "
                    f"{budget / 2**30:.1f} GiB"
                )
            elif max_seconds is not None and seconds > max_seconds:
                r["status"] = "skipped"
                r["reason"] = f"predicted {seconds:.0f} s per pass > max_seconds {max_seconds:g}"
            else:
                n_warm, n_runs = warmup, runs
                if max_seconds is not None and (module, p) in rate:  # fewer repeats if long
                    n_warm = warmup if seconds * (warmup + 1) <= max_seconds else 0
                    n_runs = max(1, min(runs, int(max_seconds / max(seconds, 1e-9)) - n_warm))
                spec = dict(module=module, size=(h, w), passes=p, runs=n_runs, warmup=n_warm)
                spec.update(device=device, group=g, **shape)
                limit = None if max_seconds is None else 120 + 3 * max_seconds * (n_runs + n_warm)
                r.update(measure_case(**spec) if measure is None else measure(spec, limit))
                r.update(runs=n_runs, warmup=n_warm)
                if r["status"] == "ok":  # small cases run below the machine's FLOP rate:
                    seen = r["median_ms"] / 1000 / max(r["flops"], 1)  # keep the fastest
                    rate[(module, p)] = min(seen, rate.get((module, p), DEFAULT_RATE))
            results.append(r)
            if log is not None:
                log(r)
    return results


def load_results(path: str | Path = COMMITTED_RESULTS) -> dict[str, Any]:
    """A report written by the CLI: ``{"system", "config", "results"}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no benchmark results at {path}: run `isa-explorer bench attention --out {path}`"
        )
    report = json.loads(path.read_text())
    if "results" not in report:
        raise ValueError(f"{path} is not a benchmark report (no 'results' list)")
    return report
