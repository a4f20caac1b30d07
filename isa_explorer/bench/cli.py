"""``isa-explorer bench KIND [ARGS]``: every benchmark under one command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from isa_explorer.cli import dispatch

BENCHMARKS = {
    "attention": (
        "isa_explorer.bench.attention_cli",
        "ISA vs dense attention modules by resolution: memory, time, FLOPs",
    ),
    "decoder": ("isa_explorer.bench.decoder", "the whole decoder: fused vs explicit vs dense"),
    "click": ("isa_explorer.bench.click", "the app's server-side latency of one click"),
    "synthetic": ("isa_explorer.bench.synthetic", "speed of the synthetic scene generator"),
    "export": ("isa_explorer.bench.export", "ONNX / torch.export vs eager: exactness, CPU latency"),
}


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer bench") -> int:
    return dispatch(BENCHMARKS, sys.argv[1:] if argv is None else argv, prog, "benchmark")


if __name__ == "__main__":
    sys.exit(main())
