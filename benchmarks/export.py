"""Exported models against eager PyTorch: exactness at several sizes, and CPU latency.

For each model (the embedded default model; a full-size ISANet R-50-D8 with random weights,
19 classes) one dynamic-shape ONNX file and one ``.pt2`` are exported, then run at sizes none
of which is the export's. Exactness: max |difference| relative to the eager logits' range, and
argmax agreement. Latency: median of ``--runs`` calls at ``--size`` with ``--threads`` threads,
eager PyTorch (``inference_mode``) against onnxruntime's CPU provider, as a ratio measured in
one run. Writes ``results/export_cpu.json`` after each model::

    python benchmarks/export.py                       # default + r50, 512x1024, 2 threads
    python benchmarks/export.py --models default --runs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from isa_explorer.cli import parse_size
from isa_explorer.costs.measure import median_ms, system_info, time_runs
from isa_explorer.export import export_model, load_exported
from isa_explorer.models.isanet import ISANet
from isa_explorer.pretrained import load_default_model

CHECK_SIZES = ((256, 512), (257, 385), (512, 1024), (97, 131))


def build(name: str) -> ISANet:
    """``"default"``: the embedded model; ``"r50"``: ISANet R-50-D8, random weights."""
    if name == "default":
        return load_default_model()
    torch.manual_seed(0)
    return ISANet(encoder_name="tu-resnet50c", encoder_weights=None, classes=19).eval()


def exactness(model: ISANet, runners: dict, sizes: Sequence[tuple[int, int]]) -> list[dict]:
    """Each runner against eager at each size: relative max |diff| and argmax agreement."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for h, w in sizes:
        images = torch.randint(0, 256, (1, 3, h, w), generator=gen).float()
        with torch.inference_mode():
            ref = model(model.normalize(images))
        spread = float(ref.max() - ref.min())
        for fmt, run in runners.items():
            got = torch.from_numpy(run(images))
            rows.append(
                {
                    "format": fmt,
                    "size": [h, w],
                    "max_abs_diff_rel_to_range": float((got - ref).abs().max()) / spread,
                    "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).float().mean()),
                }
            )
    return rows


def latency(model: ISANet, runners: dict, size: tuple[int, int], runs: int) -> dict:
    """Median ms per image of eager PyTorch and of each exported runner at ``size``."""
    images = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(1))
    images = images.float()

    def eager() -> None:
        with torch.inference_mode():
            model(model.normalize(images))

    out = {"eager_ms": median_ms(time_runs(eager, runs, 1))}
    array = images.numpy()
    for fmt, run in runners.items():
        out[f"{fmt}_ms"] = median_ms(time_runs(lambda run=run: run(array), runs, 1))
        out[f"{fmt}_over_eager"] = out[f"{fmt}_ms"] / out["eager_ms"]
    return out


def main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/export.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=("default", "r50"), default=["default", "r50"]
    )
    parser.add_argument("--size", type=parse_size, default=(512, 1024), help="latency size HxW")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/export_cpu.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    report = {"benchmark": __doc__.splitlines()[0], "system": system_info(command=command)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = build(name)
            files = {
                fmt: export_model(model, Path(tmp) / name, fmt) for fmt in ("onnx", "torch-export")
            }
            runners = {
                "onnxruntime": load_exported(files["onnx"], threads=args.threads),
                "torch_export": load_exported(files["torch-export"]),
            }
            rows = exactness(model, runners, CHECK_SIZES)
            timing = latency(model, runners, tuple(args.size), args.runs)
            report[name] = {"exactness": rows, "latency": {"size": list(args.size), **timing}}
            print(f"{name}:")
            for r in rows:
                print(
                    f"  {r['format']:12s} {r['size'][0]}x{r['size'][1]}: max|d|/range "
                    f"{r['max_abs_diff_rel_to_range']:.2e}, argmax {r['argmax_agreement']:.6f}"
                )
            print(
                f"  {args.size[0]}x{args.size[1]}, {args.threads} threads: eager "
                f"{timing['eager_ms']:.0f} ms, onnxruntime {timing['onnxruntime_ms']:.0f} ms "
                f"(x{timing['onnxruntime_over_eager']:.2f}), torch.export "
                f"{timing['torch_export_ms']:.0f} ms (x{timing['torch_export_over_eager']:.2f})"
            )
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each model
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
