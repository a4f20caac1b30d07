"""Command line of ``isa-explorer bench attention``: table, JSON, PNG and SVG."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from isa_explorer.bench.runner import run_benchmark
from isa_explorer.cli import parse_size
from isa_explorer.costs.analytic import PASSES, modules
from isa_explorer.costs.cases import RESOLUTIONS
from isa_explorer.costs.measure import system_info
from isa_explorer.costs.plot import plot_results

#: How the command is named in reports and help.
PROG = "isa-explorer bench attention"
HEADER = (
    f"{'input':>9} {'feature':>8} {'module':<15} {'pass':<8} {'ms':>10} {'MiB':>9} "
    f"{'model MiB':>10} {'GFLOP':>9} {'analytic':>9}  status"
)


def format_row(r: dict[str, Any]) -> str:
    """One result as a table row."""
    res, feat = "x".join(map(str, r["resolution"])), "x".join(map(str, r["feature"]))
    p = "fwd" if r["pass"] == "forward" else "fwd+bwd"
    ok = r.get("status") == "ok"
    ms = f"{r['median_ms']:.1f}" if ok else "-"
    mib = f"{r['peak_mib']:.1f}" if ok else "-"
    status = r.get("status", "?")
    if not ok:
        status += ": " + r.get("reason", r.get("error", ""))
    return (
        f"{res:>9} {feat:>8} {r['module']:<15} {p:<8} {ms:>10} {mib:>9} "
        f"{r['analytic']['predicted_peak_mib']:>10.1f} {r['flops'] / 1e9:>9.2f} "
        f"{r['analytic']['flops'] / 1e9:>9.2f}  {status}"
    )


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every module against dense attention's explicit path, per feature size (forward).

    For each size where ``dense-explicit`` ran: each module's measured peak and time, the
    measured peak over dense's (``None`` where dense's peak growth was not measurable: in-process
    runs) and, beside it, the analytic ratios of the heads' declared costs: affinity elements
    (ISA's ``(Np/P + P) Np / N^2``, criss-cross's ``(h + w - 1) / N``, ...) and the peak model.
    """
    by = {
        (tuple(r["feature"]), r["module"]): r
        for r in results
        if r["pass"] == "forward" and r.get("status") == "ok"
    }
    out: dict[str, dict[str, Any]] = {}
    for (feat, module), r in by.items():
        dense = by.get((feat, "dense-explicit"))
        if dense is None:
            continue
        a, d = r["analytic"], dense["analytic"]
        row = out.setdefault(f"{feat[0]}x{feat[1]}", {"dense_peak_mib": dense["peak_mib"]})
        row.setdefault("modules", {})[module] = {
            "peak_mib": r["peak_mib"],
            "median_ms": r["median_ms"],
            "measured_peak_over_dense": (
                round(r["peak_mib"] / dense["peak_mib"], 4) if dense["peak_mib"] > 0 else None
            ),
            "time_over_dense": round(r["median_ms"] / max(dense["median_ms"], 1e-9), 4),
            "analytic_affinity_over_dense": round(
                a["affinity_mib"] / max(d["affinity_mib"], 1e-12), 4
            ),
            "analytic_peak_over_dense": round(
                a["predicted_peak_mib"] / max(d["predicted_peak_mib"], 1e-12), 4
            ),
        }
    return out


def format_summary(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One line per feature size: each module's peak memory over dense's (measured, and the
    analytic peak model in brackets)."""
    lines = []
    for feat, row in summary.items():
        parts = []
        for module, m in row["modules"].items():
            if module == "dense-explicit":
                continue
            measured = m["measured_peak_over_dense"]
            shown = "-" if measured is None else f"{measured:.3g}"
            parts.append(f"{module} {shown} ({m['analytic_peak_over_dense']:.3g})")
        lines.append(f"{feat}: peak memory / dense-explicit (forward): " + ", ".join(parts))
    return lines


def _group(text: str) -> int | str:
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"--group {text!r}: a positive integer (4, 8, 16) or auto")


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Memory, time and FLOPs of the attention heads (ISA, dense, ...) by resolution.",
    )
    res = ["x".join(map(str, r)) for r in RESOLUTIONS]
    p.add_argument(
        "--resolutions",
        type=parse_size,
        nargs="+",
        default=RESOLUTIONS,
        help=f"input sizes HxW, features at 1/8 (default {' '.join(res)})",
    )
    p.add_argument("--modules", nargs="+", choices=list(modules()), default=list(modules()))
    p.add_argument("--passes", nargs="+", choices=list(PASSES), default=list(PASSES))
    p.add_argument("--group", type=_group, default=8, help="ISA group side or auto (sqrt N)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-memory", type=float, help="GiB a case may use (default: available)")
    p.add_argument("--max-seconds", type=float, help="longest predicted pass to run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--isa-channels", type=int, default=256)
    p.add_argument("--no-subprocess", action="store_true", help="measure in this process")
    p.add_argument("--out", type=Path, default=Path("results/benchmark_cpu.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the benchmark; write ``--out`` (JSON) and the figure beside it (PNG and SVG)."""
    args = parse_args(argv, prog)
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    system = system_info(args.device, command)
    print(HEADER)
    results = run_benchmark(
        [tuple(r) for r in args.resolutions],
        args.modules,
        args.passes,
        args.group,
        args.device,
        None if args.max_memory is None else args.max_memory * 2**30,
        args.max_seconds,
        subprocess=not args.no_subprocess,
        runs=args.runs,
        warmup=args.warmup,
        channels=args.channels,
        isa_channels=args.isa_channels,
        log=lambda r: print(format_row(r), flush=True),
    )
    system["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config["resolutions"] = [list(r) for r in args.resolutions]
    report = {"system": system, "config": config, "results": results}
    report["summary"] = summarize(results)
    for line in format_summary(report["summary"]):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    figures = [args.out.with_suffix(s) for s in (".png", ".svg")]
    for f in figures:
        plot_results(results, f)
    print(f"wrote {args.out}, {figures[0].name}, {figures[1].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
