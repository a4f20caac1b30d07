"""Evaluate a model on a dataset split: ``python train/evaluate.py --dataset NAME [...]``.

The same as ``isa-explorer evaluate``; the code lives in :mod:`isa_explorer.evaluation.evaluate_cli`.
"""

import sys

from isa_explorer.evaluation.evaluate_cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python train/evaluate.py"))
