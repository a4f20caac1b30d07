"""``isa-explorer bench KIND [ARGS]``: the package's benchmarks (the rest: ``benchmarks/``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from isa_explorer.cli import dispatch

BENCHMARKS = {
    "attention": (
        "isa_explorer.bench.attention_cli",
        "ISA vs dense attention modules by resolution: memory, time, FLOPs",
    ),
    "decoder": (
        "isa_explorer.bench.decoder",
        "every head's whole decoder by resolution: memory, time, FLOPs, forward and training step",
    ),
}


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer bench") -> int:
    return dispatch(BENCHMARKS, sys.argv[1:] if argv is None else argv, prog, "benchmark")


if __name__ == "__main__":
    sys.exit(main())
