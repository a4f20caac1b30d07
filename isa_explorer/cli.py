"""The ``isa-explorer`` command: one entry point, a subcommand per tool.

``isa-explorer COMMAND [ARGS]`` (or ``python -m isa_explorer COMMAND [ARGS]``) hands ``ARGS`` to
the command's own parser; ``isa-explorer COMMAND --help`` lists its options. Each command's
module is imported only when it runs, so ``isa-explorer --help`` needs neither gradio nor a
model.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from isa_explorer import __version__

#: ``name -> (module with main(argv, prog), one-line description)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("isa_explorer.explorer.app", "the browser app: click a pixel, see where ISA looks"),
    "fit": ("isa_explorer.training.cli", "train with a published recipe (torchrun for GPUs)"),
    "evaluate": ("isa_explorer.evaluation.evaluate_cli", "mIoU on a dataset split, as mmseg"),
    "predict": ("isa_explorer.evaluation.predict_cli", "segment image files: masks, overlays"),
    "convert": ("isa_explorer.convert", "an mmseg checkpoint (ISA or another head) -> a model dir"),
    "zoo": ("isa_explorer.zoo.cli", "the released mmseg models by name: list, download"),
    "export": ("isa_explorer.export.cli", "ONNX / torch.export with any batch, height and width"),
    "bench": ("isa_explorer.bench.cli", "benchmark: attention modules (the rest: benchmarks/)"),
    "experiment": ("isa_explorer.experiments.cli", "experiments: context, default-model"),
}


def dispatch(
    commands: dict[str, tuple[str, str]], argv: Sequence[str], prog: str, what: str = "command"
) -> int:
    """Run ``argv[0]``'s ``main(argv[1:], prog)``; list the commands for ``-h`` or none."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} {what.upper()} [ARGS]\n\n{what}s:")
        for name, (_, text) in commands.items():
            print(f"  {name:<14} {text}")
        print(f"\n`{prog} {what.upper()} --help` gives the options of one {what}.")
        return 0 if argv else 2
    name = argv[0]
    if name not in commands:
        print(
            f"{prog}: unknown {what} {name!r}; choose from {', '.join(commands)}", file=sys.stderr
        )
        return 2
    try:
        module = importlib.import_module(commands[name][0])
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "isa_explorer":
            raise
        print(
            f"{prog} {name} needs {err.name!r}, which is not installed: "
            "pip install 'isa-explorer[all]' (or the requirements.lock of the repository)",
            file=sys.stderr,
        )
        return 1
    return int(module.main(argv[1:], prog=f"{prog} {name}") or 0)


def parse_size(text: str) -> tuple[int, int]:
    """``"128x256"`` -> ``(128, 256)``: the ``HxW`` sizes of every command line.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not two positive integers joined by ``x``.
    """
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: write HxW, e.g. 128x256") from None
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    """``isa-explorer COMMAND [ARGS]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:
        print(f"isa-explorer {__version__}")
        return 0
    return dispatch(COMMANDS, argv, "isa-explorer")


if __name__ == "__main__":
    sys.exit(main())
