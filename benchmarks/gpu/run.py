#!/usr/bin/env python
"""The GPU check: the CUDA path measured in one short run.

Sections (``--sections``), each a list of cases that run and are recorded one at a time:

* ``train`` -- ``train()`` (what ``train/fit.py`` runs) with the published R-50-D8 Cityscapes
  recipe (512x1024 crops, batch 2, bf16 autocast, random init) on a generated Cityscapes
  layout at full size: s/iter, images/s and peak memory, fused vs explicit ISA, eager and
  ``torch.compile``;
* ``inference`` -- the fused R-50-D8 on whole 1024x2048 images: images/s and peak memory,
  fp32 and bf16, eager and compiled;
* ``heads`` -- the attention-module and decoder benchmarks, fused vs explicit vs dense,
  forward and forward+backward, 64x128 to 256x512 feature maps;
* ``token_budget`` -- the streamed inference path's token budget at a 256x512 map;
* ``graph_breaks`` -- graphs and graph breaks of the compiled decoder and model;
* ``sync_bn`` -- SyncBatchNorm's synchronised path (NCCL) against BatchNorm.

Eager cases run first, compiled ones last. The JSON (``--out``) is rewritten atomically after
every case, with a markdown table beside it (same name, ``.md``), so a run that is cut short
keeps what it measured; a case that fails records its error and the check goes on. Cases that
would end past ``--time-limit`` are recorded as skipped. ``--smoke`` runs the same code at tiny
sizes on the CPU (targets are then not judged). How to run it on a GPU machine without a
package registry: ``docs/gpu_check.md``.

The modules beside this script hold the sizes (``plan.py``), the sections (``sections.py``,
``heads.py``), the summary and markdown (``report.py``) and dynamo's graph counts
(``graph_breaks.py``); they import one another by name, which works because Python puts this
script's folder first on ``sys.path``. The whole-decoder cases are the package's
(:mod:`isa_explorer.bench.decoder`, ``isa-explorer bench decoder``).

Usage, from the repository root (the package installed, or on ``PYTHONPATH``)::

    python benchmarks/gpu/run.py            # -> results/gpu_check.json and .md
    python benchmarks/gpu/run.py --smoke    # tiny sizes on the CPU -> results/gpu_check_smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heads import budget_cases, head_cases
from isa_explorer.costs.measure import system_info
from isa_explorer.training.logs import jsonable
from plan import Case, Plan, full_plan, smoke_plan
from report import markdown, summarize
from sections import (
    Context,
    free,
    graph_break_cases,
    inference_cases,
    sync_bn_cases,
    train_cases,
)

#: Section name -> builder of its cases, in report order.
SECTIONS: dict[str, Callable[[Plan, Context], list[Case]]] = {
    "train": train_cases,
    "inference": inference_cases,
    "heads": head_cases,
    "token_budget": budget_cases,
    "graph_breaks": graph_break_cases,
    "sync_bn": sync_bn_cases,
}
DEFAULT_OUT = Path("results/gpu_check.json")
SMOKE_OUT = Path("results/gpu_check_smoke.json")
#: Seconds the full check plans for (it must end within 5 minutes on one H200).
DEFAULT_TIME_LIMIT = 285.0


def machine(device: str, command: str) -> dict[str, Any]:
    """:func:`system_info` plus the CUDA, cuDNN and precision settings of this process."""
    info = system_info(device, command)
    info.update(
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
        cudnn_tf32=torch.backends.cudnn.allow_tf32,
    )
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    return info


def write_report(report: dict[str, Any], out: Path) -> None:
    """Write the JSON and the markdown beside it, each atomically (temporary file, rename)."""
    report["summary"] = summarize(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (out, json.dumps(report, indent=2, allow_nan=False) + "\n"),
        (out.with_suffix(".md"), markdown(report)),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def order(cases: list[Case]) -> list[Case]:
    """Eager cases first, in section order; then the compiled ones, one section after the
    other in turn (train fused, inference bf16, train explicit, inference fp32), so a time
    limit leaves out the least needed."""
    compiled: dict[str, list[Case]] = {}
    for case in cases:
        if case.compiled:
            compiled.setdefault(case.section, []).append(case)
    turns = [c for i in range(len(cases)) for group in compiled.values() for c in group[i : i + 1]]
    return [c for c in cases if not c.compiled] + turns


def _run_case(case: Case, plan: Plan, spent: float, time_limit: float | None) -> dict[str, Any]:
    """Run one case (or record why not): its result with ``status`` and ``seconds``."""
    record: dict[str, Any] = {"name": case.name}
    if case.name in plan.compile_skip:
        return {**record, "status": "skipped", "reason": plan.compile_skip[case.name]}
    if time_limit is not None and spent + case.estimate_s > time_limit:
        reason = (
            f"time limit: {spent:.0f} s spent, about {case.estimate_s:.0f} s more needed, "
            f"limit {time_limit:.0f} s"
        )
        return {**record, "status": "skipped", "reason": reason}
    t0 = time.perf_counter()
    try:
        record.update(jsonable(case.run()))
        record["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one failed case must not end the check
        record.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        free(plan.device)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def run_check(
    plan: Plan,
    out: Path,
    sections: list[str] | None = None,
    time_limit: float | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the sections' cases (eager first), rewriting ``out`` after each; return the report.

    Args:
        plan: Sizes and device (:func:`full_plan` or :func:`smoke_plan`).
        out: The JSON path; the markdown goes next to it (``.md``).
        sections: Names from :data:`SECTIONS` (default: all).
        time_limit: Seconds; cases that would end later are recorded as skipped.
        command: The command line recorded in the report.
    """
    sections = list(SECTIONS) if sections is None else sections
    start = time.perf_counter()
    report: dict[str, Any] = {
        "kind": "gpu_check",
        "smoke": plan.smoke,
        "status": "running",
        "system": machine(plan.device, command or " ".join(sys.argv)),
        "plan": dataclasses.asdict(plan),
        "time_limit_s": time_limit,
        "sections": {name: {"cases": []} for name in sections},
    }
    with tempfile.TemporaryDirectory(prefix="isa-gpu-check-") as scratch:
        ctx = Context(plan, Path(scratch))
        cases: list[Case] = []
        for name in sections:
            try:
                cases += SECTIONS[name](plan, ctx)
            except Exception as e:  # noqa: BLE001
                report["sections"][name]["error"] = f"{type(e).__name__}: {e}"
        cases = order(cases)
        write_report(report, out)
        for case in cases:
            record = _run_case(case, plan, time.perf_counter() - start, time_limit)
            report["sections"][case.section]["cases"].append(record)
            report["elapsed_s"] = round(time.perf_counter() - start, 1)
            note = record.get("error") or record.get("reason") or ""
            print(
                f"[{report['elapsed_s']:7.1f} s] {case.section}: {case.name}: "
                f"{record['status']} {note}".rstrip(),
                file=sys.stderr,
                flush=True,
            )
            write_report(report, out)
    report["status"] = "done"
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_report(report, out)
    return report


def main(argv: list[str] | None = None, prog: str = "python benchmarks/gpu/run.py") -> int:
    """Parse the command line, run the check, print the markdown; 1 if a case failed."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (a rehearsal)")
    p.add_argument(
        "--out", type=Path, help=f"JSON path (default {DEFAULT_OUT}; smoke: {SMOKE_OUT})"
    )
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="default: all")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile cases")
    p.add_argument("--device", help="default: cuda (smoke: cpu)")
    p.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds (default {DEFAULT_TIME_LIMIT:g}; smoke: none); later cases are skipped",
    )
    args = p.parse_args(argv)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(
            f"{prog}: no CUDA device here; --smoke runs the same code at tiny sizes on the CPU",
            file=sys.stderr,
        )
        return 2
    if args.smoke:
        plan = dataclasses.replace(smoke_plan(not args.no_compile), device=device)
    else:
        plan = full_plan(device, not args.no_compile)
    out = args.out or (SMOKE_OUT if args.smoke else DEFAULT_OUT)
    limit = args.time_limit
    if limit is None and not args.smoke:
        limit = DEFAULT_TIME_LIMIT
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    report = run_check(plan, out, args.sections, limit, command)
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    cases = [c for section in report["sections"].values() for c in section["cases"]]
    return 1 if any(c["status"] == "failed" for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
