"""Segmentation evaluation: confusion-matrix metrics, mmseg's test-time inference, sharding.

The public entry point is :mod:`isa_explorer.evaluate` (``evaluate``, ``inference``,
``aug_inference``, ``ConfusionMatrix``, ``format_table``).
"""

from isa_explorer.evaluation.distributed import ShardSampler, init_from_env
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
    "ShardSampler",
    "aug_inference",
    "format_table",
    "inference",
    "init_from_env",
    "slide_inference",
]
