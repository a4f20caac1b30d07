"""Command-line options shared by ``isa-explorer evaluate`` and ``isa-explorer predict``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from isa_explorer.evaluation.inference import MS_SCALES, SLIDE_CROP, SLIDE_STRIDE

if TYPE_CHECKING:
    from isa_explorer.train_config import TrainConfig


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
        help="default: the zoo model's published test mode, a fit run's recipe's, else whole",
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
            help=f"slide {what} (default: the zoo model's or run's, else {default[0]} {default[1]})",
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
    Cityscapes models), a ``train/fit.py`` run as its recipe's ``evaluation`` says
    (:func:`model_recipe`); any other model whole-image, with the slide defaults if asked to
    slide.
    """
    if args.mode is None or args.crop is None or args.stride is None:
        from isa_explorer.pretrained import DEFAULT_MODEL_DIR, resolve_model_dir
        from isa_explorer.zoo import read_entry

        entry = read_entry(resolve_model_dir(args.checkpoint or DEFAULT_MODEL_DIR))
        recipe = model_recipe(args.checkpoint)
        if entry is not None:
            mode, crop, stride = entry.test_mode, entry.test_crop, entry.test_stride
        elif recipe is not None:
            ev = recipe.evaluation
            mode, crop, stride = ev.mode, ev.crop, ev.stride
        else:
            mode, crop, stride = "whole", None, None
        args.mode = args.mode or mode
        args.crop = args.crop or crop or SLIDE_CROP
        args.stride = args.stride or stride or SLIDE_STRIDE


def model_recipe(checkpoint: str | None) -> TrainConfig | None:
    """The training config a model was made with, where it is known.

    A ``train/fit.py`` run (its directory or its ``best/`` / ``final/`` model) has its
    ``config.json``; a zoo model (a name, or a cached model directory with its ``zoo.json``)
    whose name is a published recipe has that recipe of :data:`~isa_explorer.configs.CONFIGS`.
    A zoo name is looked up without downloading anything.

    Args:
        checkpoint: What ``--checkpoint`` names (``None``: the embedded default model).

    Returns:
        The config, or ``None`` for any other model.
    """
    from isa_explorer import zoo
    from isa_explorer.configs import CONFIGS, TrainConfig
    from isa_explorer.pretrained import DEFAULT_MODEL_DIR, resolve_model_dir

    path = Path(checkpoint or DEFAULT_MODEL_DIR).expanduser()
    if not path.exists():  # a zoo name (or nothing: loading the model says so)
        entry = zoo.find_entry(str(checkpoint))
    else:
        model_dir = resolve_model_dir(path)
        for run_config in (model_dir / "config.json", model_dir.parent / "config.json"):
            try:  # the model's own config.json is not a TrainConfig: skipped
                return TrainConfig.load(run_config)
            except (OSError, ValueError, TypeError):
                continue
        entry = zoo.read_entry(model_dir)
    return CONFIGS.get(entry.name) if entry is not None else None
