"""Command-line options shared by ``isa-explorer evaluate`` and ``isa-explorer predict``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from isa_explorer.evaluation.inference import MS_SCALES, SLIDE_CROP, SLIDE_STRIDE


def add_inference_arguments(p: argparse.ArgumentParser, scale_help: str) -> None:
    """Add the model and test-time options: ``--checkpoint``, ``--mode``, ``--crop``,
    ``--stride``, ``--ms``, ``--flip``, ``--scale`` and ``--device``.

    Args:
        p: The parser to extend.
        scale_help: Help text of ``--scale`` (its default differs between the tools).
    """
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model directory (save_pretrained / train/fit.py run / converted mmseg "
        "checkpoint); default: the embedded default model",
    )
    p.add_argument("--mode", choices=("whole", "slide"), default="whole")
    for flag, default, what in (
        ("--crop", SLIDE_CROP, "window"),
        ("--stride", SLIDE_STRIDE, "step"),
    ):
        p.add_argument(
            flag,
            type=int,
            nargs=2,
            default=default,
            metavar=("H", "W"),
            help=f"slide {what} (default {default[0]} {default[1]})",
        )
    p.add_argument("--ms", action="store_true", help=f"multi-scale test, ratios {MS_SCALES}")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped images")
    p.add_argument(
        "--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"), help=scale_help
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
