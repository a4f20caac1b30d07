"""Train ISANet: ``python train/fit.py --config NAME [...]`` (``torchrun ... train/fit.py`` on GPUs).

The same as ``isa-explorer fit``; the code lives in :mod:`isa_explorer.training.cli`.
"""

import sys

from isa_explorer.training.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python train/fit.py"))
