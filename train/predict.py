"""Segment image files: ``python train/predict.py IMAGES --out DIR [...]``.

The same as ``isa-explorer predict``; the code lives in :mod:`isa_explorer.evaluation.predict_cli`.
"""

import sys

from isa_explorer.evaluation.predict_cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python train/predict.py"))
