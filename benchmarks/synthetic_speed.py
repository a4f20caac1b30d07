"""Generation speed of the synthetic long-range-context dataset on one CPU core.

Usage::

    python benchmarks/synthetic_speed.py --images 500 --out benchmarks/results/synthetic_speed.json

Prints images/s of :func:`generate` (numpy ``(H, W, 3)``) and of dataset items (tensors) per
size, and writes them as JSON.
"""

from __future__ import annotations

import os

# One core: set before numpy/torch load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from isa_explorer.data.synthetic import SyntheticContextDataset, generate  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images per timing")
    parser.add_argument("--sizes", default="256x512,128x256", help="comma-separated HxW sizes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = []
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.lower().split("x"))
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


if __name__ == "__main__":
    main()
