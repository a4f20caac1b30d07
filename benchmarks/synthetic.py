"""Generation speed of the synthetic long-range-context dataset on one CPU core.

Usage::

    python benchmarks/synthetic.py --images 500 --out results/synthetic_speed.json

Prints images/s of :func:`generate` (numpy ``(H, W, 3)``) and of dataset items (tensors) per
size, with one torch thread (the generator itself is single-threaded numpy), and writes them
as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from isa_explorer.cli import parse_size
from isa_explorer.data.synthetic import SyntheticContextDataset, generate


def images_per_second(fn, n: int, repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``fn(i)`` for ``i`` in ``range(n)``, as calls per second."""
    fn(0)  # warm-up (caches, lazy imports)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return n / best


def main(argv: list[str] | None = None, prog: str = "python benchmarks/synthetic.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images per timing")
    parser.add_argument(
        "--sizes", type=parse_size, nargs="+", default=[(256, 512), (128, 256)], help="HxW sizes"
    )
    parser.add_argument("--out", type=Path, default=Path("results/synthetic_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results = []
    for size in args.sizes:
        dataset = SyntheticContextDataset(length=args.images, seed=0, size=size)
        row = {
            "size": list(size),
            "generate_images_per_s": images_per_second(
                lambda i, s=size: generate(0, i, s), args.images
            ),
            "dataset_items_per_s": images_per_second(dataset.__getitem__, args.images),
        }
        results.append(row)
        print(
            f"{size[0]}x{size[1]}: generate {row['generate_images_per_s']:.0f} images/s, "
            f"dataset items {row['dataset_items_per_s']:.0f} items/s (1 thread)"
        )
    report = {
        "benchmark": "synthetic-context generation speed",
        "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)]),
        "threads": 1,
        "images_per_timing": args.images,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
