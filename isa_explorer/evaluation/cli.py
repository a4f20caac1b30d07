"""Command-line options shared by ``isa-explorer evaluate`` and ``isa-explorer predict``."""

from __future__ import annotations

import argparse

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
        default=None,
        metavar="MODEL",
        help="model directory (save_pretrained / train/fit.py run / converted mmseg "
        "checkpoint) or zoo name (cityscapes-r50, ...; `isa-explorer zoo list`); default: the "
        "embedded default model",
    )
    p.add_argument(
        "--mode",
        choices=("whole", "slide"),
        default=None,
        help="default: the zoo model's published test mode, else whole",
    )
    for flag, default, what in (
        ("--crop", SLIDE_CROP, "window"),
        ("--stride", SLIDE_STRIDE, "step"),
    ):
        p.add_argument(
            flag,
            type=int,
            nargs=2,
            default=None,
            metavar=("H", "W"),
            help=f"slide {what} (default: the zoo model's, else {default[0]} {default[1]})",
        )
    p.add_argument("--ms", action="store_true", help=f"multi-scale test, ratios {MS_SCALES}")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped images")
    p.add_argument(
        "--scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"), help=scale_help
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def resolve_test_mode(args: argparse.Namespace) -> None:
    """Fill ``args.mode``, ``args.crop`` and ``args.stride`` left unset on the command line.

    A zoo model is tested as published (``whole``, or ``slide`` 769/513 for the 769x769
    Cityscapes models); any other model whole-image, with the slide defaults if asked to slide.
    """
    if args.mode is None or args.crop is None or args.stride is None:
        from isa_explorer.pretrained import DEFAULT_MODEL_DIR, resolve_model_dir
        from isa_explorer.zoo import read_entry

        entry = read_entry(resolve_model_dir(args.checkpoint or DEFAULT_MODEL_DIR))
        args.mode = args.mode or (entry.test_mode if entry is not None else "whole")
        args.crop = args.crop or (entry and entry.test_crop) or SLIDE_CROP
        args.stride = args.stride or (entry and entry.test_stride) or SLIDE_STRIDE
