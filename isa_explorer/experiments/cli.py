"""``isa-explorer experiment NAME [ARGS]``: the experiments behind the committed results."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from isa_explorer.cli import dispatch

EXPERIMENTS = {
    "context": (
        "isa_explorer.experiments.context",
        "every head alone on one frozen encoder, on labels only a far cue decides",
    ),
    "default-model": (
        "isa_explorer.experiments.default_model",
        "export the context experiment's best runs as the embedded default models",
    ),
}


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer experiment") -> int:
    return dispatch(EXPERIMENTS, sys.argv[1:] if argv is None else argv, prog, "experiment")


if __name__ == "__main__":
    sys.exit(main())
