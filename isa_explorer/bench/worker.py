"""One worker protocol for every measurement that needs a fresh process.

A CPU process's peak resident memory never goes down, so each case of a memory benchmark runs
in a new process. :func:`run_worker` starts ``python -m isa_explorer.bench.worker KIND SPEC``
with :data:`~isa_explorer.costs.measure.WORKER_ENV`; the worker calls the function registered
for ``KIND`` in :data:`WORKERS` with the JSON ``SPEC`` and prints its JSON result as the last
line of stdout. A benchmark with a command line of its own runs its cases the same way through
:func:`run_fresh`, as ``python -m MODULE --worker SPEC`` (``isa-explorer bench decoder``:
``python -m isa_explorer.bench.decoder --worker SPEC``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from typing import Any

from isa_explorer.costs.measure import WORKER_ENV

#: ``kind -> "module:function"``; each function takes the spec dict and returns a JSON dict.
WORKERS = {
    "attention": "isa_explorer.bench.runner:worker",
    "train-step": "isa_explorer.experiments.scores:train_step_worker",
}


def run_worker(kind: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one ``kind`` measurement in a fresh process and return its JSON result.

    A crash (e.g. killed for memory) or a timeout comes back as ``{"status": "failed" |
    "timeout", "error": ...}``.

    Raises:
        ValueError: ``kind`` is not in :data:`WORKERS`.
    """
    if kind not in WORKERS:
        raise ValueError(f"unknown worker {kind!r}: choose from {', '.join(WORKERS)}")
    return run_fresh([sys.executable, "-m", __name__, kind], spec, timeout)


def run_fresh(
    command: list[str], spec: dict[str, Any], timeout: float | None = None
) -> dict[str, Any]:
    """Run ``command SPEC`` (``spec`` as JSON) in a fresh process with
    :data:`~isa_explorer.costs.measure.WORKER_ENV`; the JSON of its last stdout line is the
    result, a crash or timeout as in :func:`run_worker`."""
    cmd = [*command, json.dumps(spec)]
    try:
        env = {**os.environ, **WORKER_ENV}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result within {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": f"exit code {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    """``python -m isa_explorer.bench.worker KIND SPEC``: one case, its JSON result on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m isa_explorer.bench.worker",
        description="Run one benchmark case in this process and print its JSON result (the "
        "benchmarks start it, one fresh process per case).",
    )
    parser.add_argument("kind", choices=list(WORKERS), help="what to measure")
    parser.add_argument("spec", help="the case, as a JSON object")
    args = parser.parse_args(argv)
    module, function = WORKERS[args.kind].split(":")
    result = getattr(importlib.import_module(module), function)(json.loads(args.spec))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
