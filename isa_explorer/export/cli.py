"""``isa-explorer export MODEL OUT``: an ISANet as ONNX or a ``torch.export`` program.

The exported model takes float32 0-255 RGB ``(N, 3, H, W)`` (its normalisation is inside),
any batch and any H and W from 32 pixels unless ``--static`` fixes them, and returns logits
``(N, K, H, W)`` or, with ``--argmax``, class ids ``(N, H, W)`` at the input's resolution.

Examples:
    isa-explorer export default isanet.onnx                  # the embedded model
    isa-explorer export cityscapes-r50 r50.onnx              # a zoo model
    isa-explorer export runs/synthetic-context out.pt2 --format torch-export
    isa-explorer export DIR fixed.onnx --static 512x1024 --argmax --fp16
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from isa_explorer.cli import parse_size
from isa_explorer.export.graph import ExportError
from isa_explorer.export.writer import SUFFIX, export_model
from isa_explorer.pretrained import load_model


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer export") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        help="model directory, train/fit.py run, zoo name (isa-explorer zoo list) or 'default'",
    )
    parser.add_argument("out", type=Path, help="file to write (.onnx / .pt2 added if missing)")
    parser.add_argument("--format", choices=sorted(SUFFIX), default="onnx")
    parser.add_argument("--static", type=parse_size, metavar="HxW", help="one fixed size")
    parser.add_argument("--argmax", action="store_true", help="output class ids, not logits")
    parser.add_argument("--fp16", action="store_true", help="network in float16")
    args = parser.parse_args(argv)
    try:
        model = load_model(None if args.model == "default" else args.model)
        start = time.perf_counter()
        out = export_model(model, args.out, args.format, args.static, args.argmax, args.fp16)
    except ImportError as e:
        print(
            f"error: exporting to {args.format} needs {e.name!r}: pip install 'isa-explorer[export]'",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError, ExportError) as e:  # no such model, zoo, unsupported option
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = "any size from 32 px" if args.static is None else f"{args.static[0]}x{args.static[1]}"
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.format}, {size}, "
        f"{'class ids' if args.argmax else 'logits'}) in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
