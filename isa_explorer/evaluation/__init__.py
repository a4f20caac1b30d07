"""Segmentation evaluation: confusion-matrix metrics, mmseg's test-time inference, sharding.

``evaluate`` (a model on a dataset, :mod:`~isa_explorer.evaluation.evaluator`), ``inference``
and ``aug_inference`` (whole / slide, multi-scale + flip), ``ConfusionMatrix`` and
``format_table``. The commands ``isa-explorer evaluate`` and ``isa-explorer predict`` are in
:mod:`~isa_explorer.evaluation.evaluate_cli` and :mod:`~isa_explorer.evaluation.predict_cli`.
"""

from isa_explorer.evaluation.evaluator import evaluate
from isa_explorer.evaluation.inference import (
    MS_SCALES,
    aug_inference,
    inference,
    slide_inference,
)
from isa_explorer.evaluation.metrics import ConfusionMatrix, format_table

__all__ = [
    "MS_SCALES",
    "ConfusionMatrix",
    "aug_inference",
    "evaluate",
    "format_table",
    "inference",
    "slide_inference",
]
