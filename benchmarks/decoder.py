"""Time and peak memory of the whole ISA decoder, fused vs explicit vs dense.

``python benchmarks/decoder.py`` runs the published head (2048 input channels, 512
channels, 256 query/key channels, 8x8 groups, batch 1) on feature maps of 32x64, 64x128 and
128x256, each size and path in a fresh subprocess, and prints a table and writes JSON. Paths:

* ``fused`` -- :class:`ISADecoder` with ``attn_impl="fused"`` (scaled_dot_product_attention,
  streamed over chunks of attention sequences at inference);
* ``explicit`` -- the same weights, materialised affinities;
* ``dense`` -- :class:`DenseAttentionDecoder` (one attention over all positions, fused);
* ``dense-explicit`` -- dense with the ``N x N`` affinity materialised (not run by default);
* ``fused-checkpoint``, ``explicit-checkpoint`` -- training only: the relation blocks under
  activation checkpointing (:meth:`ISADecoder.set_full_checkpoint`).

Each path names a registered head (:func:`isa_explorer.heads.get`), an implementation and
whether it checkpoints (:data:`PATHS`).

``--mode infer`` (default) times a forward of the decoder fused for inference
(:func:`~isa_explorer.models.fusion.fuse_for_inference`) under ``inference_mode``;
``--mode train`` times a training step of the plain decoder in train mode: forward, a
mean-square loss of the logits, backward and ``zero_grad`` (written to
``results/bench_head_train_cpu.json``).

It also times the attention probe: :func:`isa_explorer.attention.query_maps` (long-range,
short-range and combined map of one query) on a cache captured once at 128x256.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from isa_explorer import heads
from isa_explorer.attention import AttentionCache, capture_attention, query_maps
from isa_explorer.bench.worker import run_fresh
from isa_explorer.cli import parse_size
from isa_explorer.costs.measure import MiB, PeakMemory, median_ms, system_info, time_runs
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.fusion import fuse_for_inference

#: ``path -> (head, attention implementation, full activation checkpointing)``.
PATHS = {
    "fused": ("isa", "fused", False),
    "explicit": ("isa", "explicit", False),
    "dense": ("dense", "fused", False),
    "dense-explicit": ("dense", "explicit", False),
    "fused-checkpoint": ("isa", "fused", True),
    "explicit-checkpoint": ("isa", "explicit", True),
}
DEFAULT_PATHS = ("fused", "explicit", "dense")
DEFAULT_TRAIN_PATHS = ("fused", "explicit", "fused-checkpoint", "explicit-checkpoint")
MODES = ("infer", "train")
DEFAULT_SIZES = ((32, 64), (64, 128), (128, 256))
#: The published head: ResNet stage-4 input, channels, query/key channels, group size.
HEAD = dict(in_channels=2048, classes=19, channels=512, isa_channels=256)
DOWN_FACTOR = (8, 8)
STRIDE = 8  # feature cell of an output-stride-8 encoder, for the probe's image size


def build_decoder(path: str, head: dict[str, int] | None = None, mode: str = "infer") -> nn.Module:
    """The decoder of one benchmark ``path`` (see module docstring).

    ``mode="infer"``: fused for inference; ``"train"``: the plain decoder in train mode.
    """
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}: choose from {', '.join(PATHS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    name, impl, checkpoint = PATHS[path]
    if checkpoint and mode != "train":
        raise ValueError(f"{path!r} is a training path (checkpointing keeps nothing at inference)")
    cfg = dict(HEAD if head is None else head)
    config = HeadConfig(
        cfg["channels"], cfg["isa_channels"], attn_impl=impl, down_factor=DOWN_FACTOR
    )
    decoder = heads.get(name).build(cfg["in_channels"], cfg["classes"], config)
    decoder.set_full_checkpoint(checkpoint)
    if mode == "train":
        return decoder.train()
    return fuse_for_inference(decoder)


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    """One training step of a decoder without an optimizer: forward, loss, backward."""
    model(x).float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def measure_decoder(
    path: str,
    size: tuple[int, int],
    runs: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    head: dict[str, int] | None = None,
    mode: str = "infer",
) -> dict[str, Any]:
    """Time and peak memory growth of one decoder forward (``mode="infer"``) or training
    step (``"train"``, :func:`train_step`), in this process.

    Run it in a fresh process (:func:`run_case`) for a CPU memory figure: the peak RSS of
    a process never goes down.
    """
    torch.manual_seed(0)
    model = build_decoder(path, head, mode).to(device)
    h, w = size
    x = torch.randn(1, model.in_conv.conv.in_channels, h, w, device=device)  # (1, Cin, h, w)
    mem = PeakMemory(device).start()
    if mode == "train":
        times = time_runs(lambda: train_step(model, x), runs, warmup, device)
    else:
        with torch.inference_mode():
            times = time_runs(lambda: model(x), runs, warmup, device)
    peak = mem.growth()
    return {
        "path": path,
        "mode": mode,
        "size": [h, w],
        "positions": h * w,
        "median_ms": round(median_ms(times), 2),
        "times_ms": [round(1000 * t, 2) for t in times],
        "peak_mib": round(peak / MiB, 1),
        "memory_method": mem.method,
        "status": "ok",
    }


def capture_cache(size: tuple[int, int], device: str = "cpu") -> AttentionCache:
    """Queries and keys of the published ISA head on a random ``size`` feature map."""
    torch.manual_seed(0)
    decoder = build_decoder("fused").to(device)
    x = torch.randn(1, HEAD["in_channels"], *size, device=device)  # (1, 2048, h, w)
    return capture_attention(decoder, x, stride=STRIDE)


def measure_probe(
    size: tuple[int, int] = (128, 256), queries: int = 30, warmup: int = 3, device: str = "cpu"
) -> dict[str, Any]:
    """Median latency of :func:`query_maps` (all three maps of one query) on a cached image."""
    cache = capture_cache(size, device)
    rng = random.Random(0)
    H, W = cache.image_size
    points = [(rng.randrange(W), rng.randrange(H)) for _ in range(queries)]
    for x, y in points[:warmup]:
        query_maps(cache, x, y)
    times = []
    for x, y in points:
        times += time_runs(lambda x=x, y=y: query_maps(cache, x, y), 1, 0, device)
    return {
        "size": list(size),
        "queries": queries,
        "median_ms": round(median_ms(times), 2),
        "max_ms": round(1000 * max(times), 2),
        "cache_mib": round(cache.nbytes / MiB, 1),
        "status": "ok",
    }


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case from a JSON spec, in this process (``--worker SPEC``, from :func:`run_case`)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "probe":
        return measure_probe(tuple(spec["size"]), spec["queries"], device=spec["device"])
    return measure_decoder(
        spec["path"],
        tuple(spec["size"]),
        spec["runs"],
        spec["warmup"],
        spec["device"],
        mode=spec.get("mode", "infer"),
    )


def run_case(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """:func:`worker` in a fresh process, ``python benchmarks/decoder.py --worker SPEC``, through
    the package's worker protocol (:func:`~isa_explorer.bench.worker.run_fresh`)."""
    return run_fresh([sys.executable, str(Path(__file__).resolve()), "--worker"], spec, timeout)


def run(
    sizes: list[tuple[int, int]],
    paths: list[str],
    runs: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    probe_size: tuple[int, int] | None = (128, 256),
    timeout: float = 1800,
    command: str | None = None,
    rounds: int = 1,
    mode: str = "infer",
) -> dict[str, Any]:
    """Measure every ``(size, path)`` in a fresh subprocess, then the probe latency.

    With ``rounds > 1`` the paths of a size run in turn ``rounds`` times (each a fresh
    process); the median is taken over the timed runs of all rounds.

    Returns:
        A report: ``system`` (:func:`system_info`), ``results`` (one dict per case),
        ``ratios`` (fused / explicit memory and time per size) and ``probe``.
    """
    threads = torch.get_num_threads()
    system = system_info(device, command)
    report: dict[str, Any] = {"system": system, "mode": mode, "head": {**HEAD}, "results": []}
    report["head"]["down_factor"] = list(DOWN_FACTOR)
    for size in sizes:
        rounds_of: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        for _ in range(rounds):  # paths alternate, so load bursts on a shared CPU hit all
            for path in paths:
                spec = dict(kind="decoder", path=path, size=list(size), runs=runs, warmup=warmup)
                spec.update(device=device, threads=threads, mode=mode)
                rounds_of[path].append(run_case(spec, timeout))
        for path in paths:
            res = merge_rounds(rounds_of[path])
            res.setdefault("path", path)
            res.setdefault("size", list(size))
            report["results"].append(res)
            print(format_row(res), file=sys.stderr, flush=True)
    report["ratios"] = ratios(report["results"])
    if probe_size is not None:
        spec = dict(kind="probe", size=list(probe_size), queries=30, device=device)
        report["probe"] = run_case({**spec, "threads": threads}, timeout)
    report["system"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the rounds of a case: all timed runs, their median, the largest peak."""
    ok = [r for r in rounds if r.get("status") == "ok"]
    if not ok:
        return rounds[-1]
    times = [t for r in ok for t in r["times_ms"]]
    merged = {**ok[0], "times_ms": times, "median_ms": round(statistics.median(times), 2)}
    merged["peak_mib"] = max(r["peak_mib"] for r in ok)
    merged["peak_mib_rounds"] = [r["peak_mib"] for r in ok]
    merged["rounds"] = len(ok)
    return merged


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``fused / explicit`` peak memory and median time per size (where both ran)."""
    by = {(tuple(r["size"]), r["path"]): r for r in results if r.get("status") == "ok"}
    out = {}
    for (size, path), r in by.items():
        e = by.get((size, "explicit"))
        if path != "fused" or e is None:
            continue
        out[f"{size[0]}x{size[1]}"] = {
            "memory_fused_over_explicit": round(r["peak_mib"] / max(e["peak_mib"], 1e-9), 3),
            "time_fused_over_explicit": round(r["median_ms"] / e["median_ms"], 3),
        }
    return out


def format_row(r: dict[str, Any]) -> str:
    size = f"{r['size'][0]}x{r['size'][1]}"
    if r.get("status") != "ok":
        return f"{size:>9} {r['path']:<19} {r.get('status')}: {r.get('error', '')}"
    return f"{size:>9} {r['path']:<19} {r['median_ms']:>11.1f} {r['peak_mib']:>11.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    lines = [f"{'features':>9} {'path':<19} {'median ms':>11} {'peak MiB':>11}"]
    lines += [format_row(r) for r in report["results"]]
    for size, r in report.get("ratios", {}).items():
        lines.append(
            f"{size}: fused/explicit memory {r['memory_fused_over_explicit']:.2f}, "
            f"time {r['time_fused_over_explicit']:.2f}"
        )
    p = report.get("probe")
    if p and p.get("status") == "ok":
        lines.append(
            f"probe at {p['size'][0]}x{p['size'][1]}: {p['median_ms']:.1f} ms median "
            f"(max {p['max_ms']:.1f}) for long, short and combined maps of one query"
        )
    s = report["system"]
    lines.append(
        f"{s['device_name']}, {s['threads']} threads, torch {s['torch']}, load {s['loadavg']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python benchmarks/decoder.py") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--mode", choices=MODES, default="infer", help="inference or training step")
    p.add_argument("--paths", nargs="+", choices=PATHS, help="default: by mode (see above)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="alternate the paths this many times")
    p.add_argument("--device", default="cpu")
    p.add_argument("--probe-size", type=parse_size, default=(128, 256))
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--out", type=Path, help="default: results/bench_head[_train]_cpu.json")
    p.add_argument("--worker", metavar="SPEC", help="run one case (JSON) here, print its result")
    args = p.parse_args(argv)
    if args.worker:  # one case of a run, in the fresh process that run_case started
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    train = args.mode == "train"
    paths = args.paths or list(DEFAULT_TRAIN_PATHS if train else DEFAULT_PATHS)
    if not train and any(path.endswith("-checkpoint") for path in paths):
        p.error("the -checkpoint paths are training paths: add --mode train")
    out = args.out or Path(f"results/bench_head{'_train' if train else ''}_cpu.json")
    report = run(
        args.sizes,
        paths,
        args.runs,
        args.warmup,
        args.device,
        None if args.no_probe or train else args.probe_size,
        rounds=args.rounds,
        mode=args.mode,
        command=" ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
    )
    print(format_table(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
