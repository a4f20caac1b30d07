"""Server-side cost of the Compare tab on the CPU, on the embedded default models.

``python benchmarks/compare_latency.py`` (default: the heads ``isa nl cc da`` on one random
512x1024 image) measures, in one process:

* ``load``: loading the chosen models' weights (once per server);
* ``analysis``: the first analysis of the image: every head's forward pass and capture, what a
  click needs (``Comparison.load_image``);
* per click, at random pixels (after 2 warm-up clicks): ``click`` (every head's maps and
  statistics from the cached records, ``Comparison.click``), ``render`` (the panels, tables and
  step maps of every column, ``compare_panels.column``), ``encode`` (Gradio's post-processing
  of the tab's images and galleries, the app's format) and ``server`` (all three: what a click
  costs the server before the network);
* ``costs`` and ``means``: the slower steps that follow an analysis (every head's forward pass
  timed, then the whole-image statistics, each bounded in time).

Prints a table and writes JSON (default ``results/compare_latency_cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from click_latency import _stats  # the same summary as the Explore tab's click benchmark
from isa_explorer.costs.measure import system_info
from isa_explorer.explorer import compare_panels as panels
from isa_explorer.explorer.compare import DEFAULT_CHOICE, Comparison


def measure(size: tuple[int, int], heads: list[str], clicks: int, seed: int = 0) -> dict:
    """Analyse one random image of ``size`` with ``heads`` and time ``clicks`` clicks."""
    import gradio as gr

    from isa_explorer.explorer.compare_tab import _FORMAT

    rng = np.random.default_rng(seed)
    cmp = Comparison()
    start = time.perf_counter()
    for name in heads:
        cmp.explorers[name].model.model  # noqa: B018  (the weights)
    load_s = time.perf_counter() - start
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    start = time.perf_counter()
    cmp.load_image("bench", image, heads)
    analysis_s = time.perf_counter() - start
    picture, gallery = gr.Image(format=_FORMAT), gr.Gallery(format=_FORMAT)
    times: dict[str, list[float]] = {k: [] for k in ("click", "render", "encode")}
    xs, ys = rng.integers(0, size[1], clicks + 2), rng.integers(0, size[0], clicks + 2)
    for i in range(clicks + 2):
        t0 = time.perf_counter()
        click = cmp.click("bench", int(xs[i]), int(ys[i]))
        t1 = time.perf_counter()
        columns = [panels.column(cmp, click, h) for h in click.heads]
        shown = [panels.query_image(click.state), panels.colour_bar_html(click)]
        t2 = time.perf_counter()
        picture.postprocess(shown[0])
        for col in columns:
            picture.postprocess(col["final"])
            picture.postprocess(col["prediction"])
            gallery.postprocess(col["steps"])
        t3 = time.perf_counter()
        if i >= 2:  # warm-up
            for key, (a, b) in (("click", (t0, t1)), ("render", (t1, t2)), ("encode", (t2, t3))):
                times[key].append(1e3 * (b - a))
    server = [sum(parts) for parts in zip(*times.values(), strict=True)]
    start = time.perf_counter()
    cmp.measure_costs("bench")
    costs_s = time.perf_counter() - start
    start = time.perf_counter()
    state = cmp.image_averages("bench")
    means_s = time.perf_counter() - start
    return {
        "image_size": list(size),
        "heads": heads,
        "feature_size": list(state.analyses[heads[0]].cache.feature_size),
        "clicks": clicks,
        "load_s": round(load_s, 3),
        "analysis_s": round(analysis_s, 3),
        **{k: _stats(v) for k, v in times.items()},
        "server": _stats(server),
        "costs_s": round(costs_s, 2),
        "costs": {n: state.costs[n] for n in heads},
        "means_s": round(means_s, 2),
        "means": {n: a.as_dict() for n, a in state.averages.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_CHOICE))
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--out", default="results/compare_latency_cpu.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = measure(tuple(args.size), args.heads, args.clicks)
    command = "python benchmarks/compare_latency.py " + " ".join(argv or sys.argv[1:])
    report = {"system": system_info("cpu", command.strip()), "result": result}
    print(f"{args.size[0]}x{args.size[1]} image, heads {' '.join(args.heads)}:")
    print(f"  weights {result['load_s']:.2f} s, first analysis {result['analysis_s']:.2f} s")
    for key in ("click", "render", "encode", "server"):
        r = result[key]
        print(
            f"  {key:7s} median {r['median_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f}  max {r['max_ms']:7.1f}"
        )
    print(f"  costs {result['costs_s']:.1f} s, whole-image means {result['means_s']:.1f} s")
    for name, m in result["means"].items():
        print(
            f"    {name}: {m['queries']} of {m['of_queries']} query cells in {m['seconds']:.1f} s"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
