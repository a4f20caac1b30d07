"""Server-side latency of one click in the explorer app, on the CPU.

``python benchmarks/click_latency.py`` analyses one 1024x2048 image with the default model
(the one-off forward pass that fills the attention cache), then times clicks at random pixels:

* ``query``: the three attention maps from the cache (:func:`isa_explorer.attention.query_maps`);
* ``render``: drawing them (and the prediction with the query marked) at display size;
* ``handler``: the whole click handler (``query`` + ``render`` + the top-regions table);
* ``encode``: Gradio's post-processing of the four output images (the app's ``DISPLAY_FORMAT``);
* ``server``: ``handler`` + ``encode``, what a click costs the server before the network.

Prints a table and writes JSON (default ``results/click_latency_cpu.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from isa_explorer.explorer import Explorer, ExplorerModel
from isa_explorer.explorer.app import DISPLAY_FORMAT


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def measure(
    size: tuple[int, int], clicks: int, show_grid: bool, seed: int = 0
) -> dict[str, object]:
    """Analyse one random image of ``size`` and time ``clicks`` clicks on it."""
    import gradio as gr

    rng = np.random.default_rng(seed)
    ex = Explorer(ExplorerModel())
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    ex.model.model  # noqa: B018  (load the weights outside the timings)
    start = time.perf_counter()
    state = ex.load_image("bench", image)
    analyse_s = time.perf_counter() - start
    component = gr.Image(format=DISPLAY_FORMAT, interactive=False)
    xs, ys = rng.integers(0, size[1], clicks + 2), rng.integers(0, size[0], clicks + 2)
    times: dict[str, list[float]] = {k: [] for k in ("query", "render", "handler", "encode")}
    for i in range(clicks + 2):
        t0 = time.perf_counter()
        maps = ex.attention(state, int(xs[i]), int(ys[i]))
        t1 = time.perf_counter()
        state = dataclasses.replace(state, query=maps.query)  # as Explorer.click does
        result = ex.render_click(state, maps, 0.6, show_grid)
        view = ex.prediction_view(state, 0.6, show_grid)
        t2 = time.perf_counter()
        for panel in (view, *result.panels.values()):
            component.postprocess(panel)
        t3 = time.perf_counter()
        if i < 2:  # warm-up
            continue
        times["query"].append((t1 - t0) * 1e3)
        times["render"].append((t2 - t1) * 1e3)
        times["handler"].append((t2 - t0) * 1e3)
        times["encode"].append((t3 - t2) * 1e3)
    server = [h + e for h, e in zip(times["handler"], times["encode"], strict=True)]
    d = ex.display(state)
    return {
        "image_size": list(size),
        "display_size": list(d.size),
        "feature_size": list(state.cache.feature_size),
        "show_grid": show_grid,
        "clicks": clicks,
        "analyse_s": round(analyse_s, 3),
        "cache_mb": round(state.nbytes / 2**20, 1),
        **{k: _stats(v) for k, v in times.items()},
        "server": _stats(server),
    }


def main(argv: list[str] | None = None, prog: str = "python benchmarks/click_latency.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("results/click_latency_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    runs = [measure(tuple(args.size), args.clicks, grid) for grid in (False, True)]
    report = {
        "benchmark": "click latency of the explorer app (server side, CPU)",
        "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
        "system": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_at_start": [round(v, 2) for v in load],
        },
        "target_ms": 100,
        "runs": runs,
    }
    print(f"image {args.size[0]}x{args.size[1]}, {args.clicks} clicks, load {load[0]:.1f}")
    print(f"{'grid':>5} {'step':>8} {'median':>8} {'p90':>8} {'max':>8}  (ms)")
    for run in runs:
        for step in ("query", "render", "handler", "encode", "server"):
            s = run[step]
            print(
                f"{run['show_grid']!s:>5} {step:>8} {s['median_ms']:8.1f} {s['p90_ms']:8.1f} "
                f"{s['max_ms']:8.1f}"
            )
        print(f"      one-off analysis {run['analyse_s']:.2f} s, cache {run['cache_mb']} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
