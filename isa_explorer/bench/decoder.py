"""Time, peak memory and FLOPs of every registered head's whole decoder, by resolution.

``isa-explorer bench decoder`` runs each head of the registry (:func:`isa_explorer.heads.names`)
as ``ISANet`` builds it (2048 input channels, 19 classes, batch 1; each head's published
settings, :data:`isa_explorer.configs.HEAD_RECIPES`: EMA's 256 channels, ISA's 256 query/key
channels and 8x8 groups, DA's 64 PAM channels, ...; otherwise 512 channels and 256 query/key
channels) on feature maps of 32x64, 64x128 and 128x256, each size and path in a fresh
subprocess, and prints a table and writes JSON, PNG and SVG. Paths (:func:`decoder_paths`):

* ``HEAD-IMPL`` -- the head with each attention implementation it has
  (:attr:`~isa_explorer.heads.protocol.Head.impls`): ``isa-fused``, ``isa-explicit``,
  ``dense-fused``, ``dense-explicit``, ``nl-fused``, ..., ``cc-explicit``; a head without
  attention has one path, its name (``fcn``);
* ``HEAD-IMPL-checkpoint`` -- training only, for heads with full activation checkpointing of
  their attention (:meth:`~isa_explorer.heads.protocol.Head.set_full_checkpoint`: ISA's).

Default paths (:func:`default_paths`): every ``HEAD-IMPL`` but ``dense-explicit`` (the dense
ablation's ``N x N`` affinity materialised: 4 GiB at 128x256; run on request), and in training
the ``fused`` checkpointed path of each head that checkpoints (``isa-fused-checkpoint``).

``--mode infer`` (default) times a forward of the decoder fused for inference
(:func:`~isa_explorer.models.fusion.fuse_for_inference`) under ``inference_mode``;
``--mode train`` times a training step of the plain decoder in train mode: forward, a
mean-square loss summed over every training output (DA's three), backward and ``zero_grad``
(written to ``results/bench_decoder_train_cpu.json``; inference to
``results/bench_decoder_cpu.json``). Each result also holds ``flops``, the whole pass counted
by ``FlopCounterMode`` on the meta device (:func:`decoder_flops`), and, where the head declares
a cost (:meth:`~isa_explorer.heads.protocol.Head.cost`), ``attention_flops_analytic``: its
context step's analytic FLOPs for the pass. A case whose analytic peak exceeds the memory
budget is ``"skipped"``. ``ratios``: ``{head: {size: fused / explicit memory and time}}``.

It also times the attention probe: :func:`isa_explorer.attention.query_maps` (long-range,
short-range and combined map of one query) on a cache captured once at 128x256.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from isa_explorer.bench.decoder_cases import (
    DOWN_FACTOR,
    HEAD,
    IMPL_ORDER,
    MODES,
    ON_REQUEST,
    PASS_OF,
    PROBE_PATH,
    DecoderPath,
    analytic_cost,
    build_decoder,
    capture_cache,
    decoder_flops,
    decoder_paths,
    default_paths,
    head_config,
    measure_decoder,
    measure_probe,
    path_of,
    train_step,
)
from isa_explorer.bench.worker import run_fresh
from isa_explorer.cli import parse_size
from isa_explorer.costs.measure import available_memory, system_info

__all__ = [  # with the cases of decoder_cases.py, for the GPU check and the tests
    "HEAD",
    "PROBE_PATH",
    "DecoderPath",
    "build_decoder",
    "capture_cache",
    "decoder_flops",
    "decoder_paths",
    "default_paths",
    "head_config",
    "main",
    "measure_decoder",
    "measure_probe",
    "merge_rounds",
    "path_of",
    "ratios",
    "run",
    "run_case",
    "train_step",
]

PROG = "isa-explorer bench decoder"
#: This module, as its fresh worker processes run it (``python -m MODULE --worker SPEC``).
MODULE = "isa_explorer.bench.decoder"
DEFAULT_SIZES = ((32, 64), (64, 128), (128, 256))
DESCRIPTION = (
    "Time, peak memory and FLOPs of every registered head's whole decoder by resolution, each "
    "path (HEAD-IMPL: isa-fused, cc-explicit, ...; HEAD-IMPL-checkpoint in training) and size "
    "in a fresh process, with each head's published settings; writes JSON, PNG and SVG."
)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One case from a JSON spec, in this process (``--worker SPEC``, from :func:`run_case`)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "probe":
        return measure_probe(tuple(spec["size"]), spec["queries"], device=spec["device"])
    size, mode = tuple(spec["size"]), spec.get("mode", "infer")
    args = (spec["runs"], spec["warmup"], spec["device"], spec.get("head"), mode)
    return measure_decoder(spec["path"], size, *args)


def run_case(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """:func:`worker` in a fresh process, ``python -m isa_explorer.bench.decoder --worker
    SPEC``, through the package's worker protocol (:func:`~isa_explorer.bench.worker.run_fresh`)."""
    return run_fresh([sys.executable, "-m", MODULE, "--worker"], spec, timeout)


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
    head: dict[str, Any] | None = None,
    max_memory: float | None = None,
) -> dict[str, Any]:
    """Measure every ``(size, path)`` in a fresh subprocess, then the probe latency.

    With ``rounds > 1`` the paths of a size run in turn ``rounds`` times (each a fresh
    process); the median is taken over the timed runs of all rounds. A case whose context
    step's analytic peak exceeds ``max_memory`` bytes (default: 85% of the memory available
    now) is ``"skipped"``.

    Returns:
        A report: ``system`` (:func:`system_info`), ``mode``, ``head`` (the shape),
        ``head_configs`` (each head's settings), ``results`` (one dict per case, with its
        FLOPs: :func:`decoder_flops`), ``ratios`` (:func:`ratios`) and ``probe``.
    """
    threads = torch.get_num_threads()
    budget = 0.85 * available_memory(device) if max_memory is None else max_memory
    report: dict[str, Any] = {"system": system_info(device, command), "mode": mode}
    report["head"] = {**(HEAD if head is None else head), "down_factor": list(DOWN_FACTOR)}
    report["head_configs"] = {}
    for path in paths:
        c = head_config(path, head)[2]
        settings = dict(channels=c.channels, key_channels=c.key_channels, options=dict(c.options))
        report["head_configs"][path_of(path).head] = {**settings, "down_factor": c.down_factor}
    report["results"] = []
    for size in sizes:
        flops = {path: decoder_flops(path, size, head, mode) for path in paths}
        skipped = {path: _too_large(path, size, head, mode, budget) for path in paths}
        rounds_of: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        for _ in range(rounds):  # paths alternate, so load bursts on a shared CPU hit all
            for path in paths:
                if skipped[path] is None:
                    spec = dict(kind="decoder", path=path, size=list(size), runs=runs)
                    spec.update(warmup=warmup, device=device, threads=threads, mode=mode, head=head)
                    rounds_of[path].append(run_case(spec, timeout))
        for path in paths:
            res = merge_rounds(rounds_of[path]) if skipped[path] is None else skipped[path]
            p = path_of(path)
            res = {"path": path, "head": p.head, "impl": p.impl, "checkpoint": p.checkpoint} | res
            res.update(mode=mode, size=list(size), positions=size[0] * size[1], **flops[path])
            report["results"].append(res)
            print(format_row(res), file=sys.stderr, flush=True)
    report["ratios"] = ratios(report["results"])
    if probe_size is not None:
        spec = dict(kind="probe", size=list(probe_size), queries=30, device=device)
        report["probe"] = run_case({**spec, "threads": threads}, timeout)
    report["system"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _too_large(
    path: str, size: tuple[int, int], head: dict[str, Any] | None, mode: str, budget: float
) -> dict[str, Any] | None:
    """A ``"skipped"`` result if the context step's analytic peak exceeds ``budget`` bytes."""
    cost = analytic_cost(path, size, head)
    peak = 0 if cost is None else cost.predicted_peak_bytes[PASS_OF[mode]]
    if peak <= budget:
        return None
    reason = f"predicted peak {peak / 2**30:.1f} GiB > memory budget {budget / 2**30:.1f} GiB"
    return {"status": "skipped", "reason": reason}


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


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{head: {"HxW": ...}}``: fused / explicit peak memory and median time of each head with
    both (not checkpointed), per size where both ran."""
    by = {
        (r["head"], tuple(r["size"]), r["impl"]): r
        for r in results
        if r.get("status") == "ok" and not r.get("checkpoint")
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, size, impl), fused in by.items():
        explicit = by.get((name, size, IMPL_ORDER[1]))
        if impl != IMPL_ORDER[0] or explicit is None:
            continue
        out.setdefault(name, {})[f"{size[0]}x{size[1]}"] = {
            "memory_fused_over_explicit": round(
                fused["peak_mib"] / max(explicit["peak_mib"], 1e-9), 3
            ),
            "time_fused_over_explicit": round(fused["median_ms"] / explicit["median_ms"], 3),
        }
    return out


def format_row(r: dict[str, Any]) -> str:
    """One result as a table row."""
    size = f"{r['size'][0]}x{r['size'][1]}"
    gflop = f"{r['flops'] / 1e9:>9.2f}" if "flops" in r else f"{'-':>9}"
    if r.get("status") != "ok":
        why = r.get("reason", r.get("error", ""))
        return f"{size:>9} {r['path']:<24} {gflop} {r.get('status')}: {why}"
    return f"{size:>9} {r['path']:<24} {gflop} {r['median_ms']:>11.1f} {r['peak_mib']:>11.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    lines = [f"{'features':>9} {'path':<24} {'GFLOP':>9} {'median ms':>11} {'peak MiB':>11}"]
    lines += [format_row(r) for r in report["results"]]
    for name, by_size in report.get("ratios", {}).items():
        for size, r in by_size.items():
            lines.append(
                f"{name} {size}: fused/explicit memory {r['memory_fused_over_explicit']:.2f}, "
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


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the benchmark; write ``--out`` (JSON) and, with ``--plot``, PNG and SVG beside it."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    known = list(decoder_paths())
    p.add_argument("--sizes", type=parse_size, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--mode", choices=MODES, default="infer", help="inference or training step")
    p.add_argument(
        "--paths",
        nargs="+",
        choices=known,
        metavar="PATH",
        help=f"of {', '.join(known)} (default: every one but {', '.join(ON_REQUEST)} and, "
        "at inference, the -checkpoint ones; in training each fused -checkpoint path)",
    )
    p.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="alternate the paths this many times")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-memory", type=float, help="GiB a case may use (default: available)")
    p.add_argument("--probe-size", type=parse_size, default=(128, 256))
    p.add_argument("--no-probe", action="store_true")
    p.add_argument("--out", type=Path, help="default: results/bench_decoder[_train]_cpu.json")
    p.add_argument("--plot", action="store_true", default=True, help="figure beside --out")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="no .png and .svg")
    p.add_argument("--worker", metavar="SPEC", help="run one case (JSON) here, print its result")
    args = p.parse_args(argv)
    if args.worker:  # one case of a run, in the fresh process that run_case started
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    train = args.mode == "train"
    chosen = args.paths or default_paths(args.mode)
    if not train and any(path_of(path).checkpoint for path in chosen):
        p.error("the -checkpoint paths are training paths: add --mode train")
    out = args.out or Path(f"results/bench_decoder{'_train' if train else ''}_cpu.json")
    report = run(
        args.sizes,
        chosen,
        args.runs,
        args.warmup,
        args.device,
        None if args.no_probe or train else args.probe_size,
        rounds=args.rounds,
        mode=args.mode,
        command=" ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
        max_memory=None if args.max_memory is None else args.max_memory * 2**30,
    )
    print(format_table(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    written = [out]
    if args.plot:
        from isa_explorer.bench.decoder_plot import plot_decoder  # matplotlib: only here

        written += [out.with_suffix(s) for s in (".png", ".svg")]
        for figure in written[1:]:
            plot_decoder(report, figure)
    print(f"wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
