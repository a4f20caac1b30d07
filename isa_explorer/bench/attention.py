"""Memory, time and FLOPs of ISA vs dense self-attention as the resolution grows.

Each *attention module* is the context step of a head without its ``in_conv``: a feature map
``(1, C, h, w)`` goes through the relation block(s) and comes back as ``(1, C, h, w)``.

* ``isa-explicit`` / ``isa-fused`` -- :class:`ISADecoder`'s long- and short-range steps;
* ``dense-explicit`` -- :class:`DenseAttentionDecoder`'s block with the ``N x N`` affinity;
* ``dense-fused`` -- the same block through ``scaled_dot_product_attention``.

Input resolutions ``H x W`` give feature maps at 1/8 (an output-stride-8 encoder). Each case
(module, pass, resolution) runs in a fresh subprocess on the CPU (peak RSS growth) or on CUDA
(``max_memory_allocated``); FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`
on the meta device (the same operators and shapes, without computing); analytic FLOPs and
memory (:func:`analytic_costs`) stand beside them. Cases predicted to exceed the available
memory, ``max_memory`` or ``max_seconds`` are reported as ``"skipped"`` with the prediction.

``isa-explorer bench attention`` prints a table and writes JSON, PNG and SVG.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from isa_explorer.bench.analytic import MODULES, PASSES, analytic_costs, auto_group
from isa_explorer.bench.flops import register_sdpa_formulas
from isa_explorer.bench.measure import (
    MiB,
    PeakMemory,
    available_memory,
    median_ms,
    time_runs,
)
from isa_explorer.bench.worker import run_worker
from isa_explorer.models.heads import DenseAttentionDecoder
from isa_explorer.models.isa.decoder import ISADecoder

__all__ = [
    "COMMITTED_RESULTS",
    "MODULES",
    "PASSES",
    "RESOLUTIONS",
    "AttentionModule",
    "analytic_costs",
    "auto_group",
    "count_flops",
    "load_results",
    "measure_case",
    "plot_results",  # noqa: F822 - imported on first use (module __getattr__)
    "run_benchmark",
]

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


class AttentionModule(nn.Module):
    """The attention (context) step of an ISA or dense head: ``(B, C, h, w) -> (B, C, h, w)``.

    Args:
        module: A name in :data:`MODULES` (``isa-fused``, ``dense-explicit``, ...).
        channels: Head channels ``C``.
        isa_channels: Query/key channels.
        group: ISA group side or ``(Ph, Pw)``.
    """

    def __init__(
        self,
        module: str,
        channels: int = 512,
        isa_channels: int = 256,
        group: int | tuple[int, int] = 8,
    ):
        super().__init__()
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}: choose from {', '.join(MODULES)}")
        kind, impl = MODULES[module]
        if kind == "isa":
            g = (group, group) if isinstance(group, int) else tuple(group)
            head = ISADecoder(channels, 1, channels, isa_channels, g, attn_impl=impl)
        else:
            head = DenseAttentionDecoder(channels, 1, channels, isa_channels, attn_impl=impl)
        # Only the context step runs: in_conv becomes the identity, out_conv is dropped. In
        # training it runs as the algorithm does, without the head's selective checkpointing
        # (whose recomputation would add the explicit path's batched products to backward).
        head.in_conv = nn.Identity()
        head.selective_checkpoint = False
        del head.out_conv, head.conv_seg
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.context(x)[0]


def count_flops(
    module: str,
    size: tuple[int, int],
    passes: str = "forward",
    channels: int = 512,
    isa_channels: int = 256,
    group: int | tuple[int, int] = 8,
) -> int:
    """FLOPs of one pass counted by ``FlopCounterMode`` on the meta device (no compute).

    The meta device runs the same operators on the same shapes without computing or
    allocating, so cases too large to run are counted too; the counts equal those taken on the
    CPU (checked in the tests).
    """
    register_sdpa_formulas()  # the CPU flash kernel counts as the matmuls it replaces
    m = AttentionModule(module, channels, isa_channels, group).to("meta")
    x = torch.randn(1, channels, *size, device="meta", requires_grad=passes != "forward")
    with FlopCounterMode(display=False) as counter:
        if passes == "forward":
            with torch.no_grad():
                m.eval()(x)
        else:
            m.train()(x).sum().backward()
    return int(counter.get_total_flops())


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
    """Time and peak memory growth of one case in this process (see :func:`run_benchmark`).

    ``forward`` runs in eval mode under ``inference_mode``; ``forward+backward`` in training
    mode with gradients for the input and the parameters.
    """
    if passes not in PASSES:
        raise ValueError(f"unknown pass {passes!r}: choose from {', '.join(PASSES)}")
    torch.manual_seed(0)
    m = AttentionModule(module, channels, isa_channels, group).to(device)
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

        def step() -> None:
            m(x).backward(grad)

        mem = PeakMemory(device).start()
        times = time_runs(step, runs, warmup, device)
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


def run_benchmark(
    resolutions: list[tuple[int, int]] = RESOLUTIONS,
    modules: list[str] = tuple(MODULES),
    passes: list[str] = PASSES,
    group: int | str = 8,
    device: str = "cpu",
    max_memory: float | None = None,
    max_seconds: float | None = None,
    subprocess: bool = True,
    runs: int = 3,
    warmup: int = 1,
    channels: int = 512,
    isa_channels: int = 256,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Measure every (resolution, module, pass) that is predicted to fit.

    Args:
        resolutions: Input image sizes ``(H, W)``; feature maps are ``(H / 8, W / 8)``.
        modules: Names from :data:`MODULES`.
        passes: ``"forward"`` and/or ``"forward+backward"``.
        group: ISA group side, or ``"auto"`` (the ``sqrt(N)``-optimal side per size).
        device: ``"cpu"`` or ``"cuda"``.
        max_memory: Bytes a case may use (default: the memory available now, less 15%).
        max_seconds: Longest predicted time of one pass: counted FLOPs times the fastest
            rate measured so far for the module and pass, or :data:`DEFAULT_RATE` (default:
            no limit).
        subprocess: Run each case in a fresh process (needed for CPU peak memory).
        runs: Timed runs per case (fewer when ``max_seconds`` would be exceeded; at least 1).
        warmup: Untimed runs before timing.
        channels: Head channels ``C``; isa_channels: query/key channels.
        log: Callable given each finished result (e.g. ``print``-based progress).

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
        for module, p in ((m, p) for m in modules for p in passes):
            r = _plan(module, p, (res_h, res_w), (h, w), g, costs[module], shape)
            seconds = r["flops"] * rate.get((module, p), DEFAULT_RATE)
            r["predicted_seconds"] = round(seconds, 2)
            peak = costs[module]["predicted_peak_bytes"][p]
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
                if subprocess:
                    limit = None
                    if max_seconds is not None:
                        limit = 120 + 3 * max_seconds * (n_runs + n_warm)
                    spec["threads"] = torch.get_num_threads()
                    r.update(run_worker("attention", spec, limit))
                else:
                    r.update(measure_case(**spec))
                r.update(runs=n_runs, warmup=n_warm)
                if r["status"] == "ok":  # small cases run below the machine's FLOP rate:
                    seen = r["median_ms"] / 1000 / max(r["flops"], 1)  # keep the fastest
                    rate[(module, p)] = min(seen, rate.get((module, p), DEFAULT_RATE))
            results.append(r)
            if log is not None:
                log(r)
    return results


def _plan(
    module: str,
    p: str,
    resolution: tuple[int, int],
    feature: tuple[int, int],
    group: int,
    cost: dict[str, Any],
    shape: dict[str, int],
) -> dict[str, Any]:
    """The record of one case before it runs: sizes, analytic costs and counted FLOPs."""
    return {
        "module": module,
        "pass": p,
        "resolution": list(resolution),
        "feature": list(feature),
        "positions": feature[0] * feature[1],
        "group": group if MODULES[module][0] == "isa" else None,
        "analytic": {
            "flops": cost["flops"][p],
            "attention_flops_forward": cost["attention_flops"],
            "affinity_mib": round(cost["affinity_bytes"] / MiB, 2),
            "predicted_peak_mib": round(cost["predicted_peak_bytes"][p] / MiB, 1),
        },
        "flops": count_flops(module, feature, p, group=group, **shape),
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case from a JSON spec, in a fresh process (:mod:`~isa_explorer.bench.worker`)."""
    spec = dict(spec)
    threads = spec.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    spec["size"] = tuple(spec["size"])
    return measure_case(**spec)


def __getattr__(name: str) -> Any:
    """``plot_results`` (:mod:`~isa_explorer.bench.plot`), imported on first use: measuring
    needs no matplotlib (the GPU check runs where there is none)."""
    if name == "plot_results":
        from isa_explorer.bench.plot import plot_results

        return plot_results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
