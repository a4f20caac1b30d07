"""Evaluate an ISANet on a dataset split: per-class IoU/Acc table, mIoU, mAcc, aAcc, JSON.

Examples:
    python train/evaluate.py --checkpoint converted/isanet_r50-d8_512x1024_40k_cityscapes \\
        --dataset cityscapes --data-root data/cityscapes --device cuda
    python train/evaluate.py --checkpoint converted/isanet_r50-d8_769x769_40k_cityscapes \\
        --dataset cityscapes --data-root data/cityscapes --mode slide --ms --flip
    python train/evaluate.py --dataset synthetic-context --json metrics.json  # default model
    torchrun --nproc_per_node 4 train/evaluate.py --checkpoint DIR --dataset ade20k \\
        --data-root data/ade/ADEChallengeData2016 --device cuda

Under ``torchrun`` each process evaluates every ``world_size``-th image and the confusion
matrices are summed (Gloo on CPU, NCCL on GPUs); the first process prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Subset, default_collate

from isa_explorer.data import DATASETS, RECIPES, build_dataset, build_eval_transforms
from isa_explorer.data.folder import FolderConfig
from isa_explorer.data.info import ALIASES
from isa_explorer.data.synthetic import SyntheticConfig
from isa_explorer.distributed import ShardSampler, cleanup_distributed, setup_distributed
from isa_explorer.evaluation.cli import add_inference_arguments, model_recipe, resolve_test_mode
from isa_explorer.evaluation.evaluator import evaluate
from isa_explorer.evaluation.inference import MS_SCALES
from isa_explorer.evaluation.metrics import format_table
from isa_explorer.pretrained import load_model
from isa_explorer.training.logs import jsonable

if TYPE_CHECKING:
    pass


def parse_args(
    argv: list[str] | None = None, prog: str = "isa-explorer evaluate"
) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder")
    p.add_argument("--split", default="val")
    add_inference_arguments(
        p, "keep-ratio test resize bound (default: the dataset's mmseg recipe, e.g. 2048 512)"
    )
    p.add_argument("--no-resize", action="store_true", help="evaluate images at their size")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per batch (>1 only when all images have one size)",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--json", type=Path, default=None, help="write the metrics here")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument(
        "--synthetic-length",
        type=int,
        default=SyntheticConfig.val_length,
        help="synthetic-context: number of scenes (the training recipe's val set)",
    )
    p.add_argument("--synthetic-seed", type=int, default=SyntheticConfig.val_seed)
    p.add_argument(
        "--synthetic-size", type=int, nargs=2, default=SyntheticConfig.size, metavar=("H", "W")
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)  # fmt: skip


def folder_settings(checkpoint: str | None) -> tuple[FolderConfig, tuple[int, int] | None]:
    """How a folder dataset is read for the model ``checkpoint``, and its eval resize bound.

    A ``train/fit.py`` run's ``config.json`` holds both (its classes, split and scale). Any
    other model gives its class names and palette (used where the folder has no
    ``classes.json``), with the default split and no resize.
    """
    from isa_explorer.configs import folder_scale
    from isa_explorer.pretrained import DEFAULT_MODEL_DIR, read_config, resolve_model_dir

    cfg = model_recipe(checkpoint)
    if cfg is not None and cfg.dataset == "folder":
        return cfg.folder, folder_scale(cfg)
    model = read_config(resolve_model_dir(checkpoint or DEFAULT_MODEL_DIR))
    return FolderConfig(classes=model.get("class_names"), palette=model.get("palette")), None


def test_scale(args: argparse.Namespace) -> tuple[int, int] | None:
    """The eval resize bound: ``--scale``; else, on the dataset the model was trained on, its
    recipe's (:func:`model_recipe`: the 769x769 Cityscapes models' (2049, 1025)); else the
    dataset's mmseg recipe (a folder dataset: its training run's; none if synthetic)."""
    if args.no_resize:
        return None
    if args.scale is not None:
        return tuple(args.scale)
    dataset = ALIASES.get(args.dataset.lower(), args.dataset.lower())
    if dataset == "folder":
        return folder_settings(args.checkpoint)[1]
    recipe = model_recipe(args.checkpoint)
    if recipe is not None and recipe.dataset == dataset and recipe.scale is not None:
        return recipe.scale
    default = RECIPES.get(dataset)
    return default["scale"] if default else None


def collate_same_size(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """``default_collate``, with a clear error for images of different sizes in one batch."""
    sizes = {tuple(image.shape[-2:]) for image, _ in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"a batch holds images of sizes {sorted(sizes)}; datasets whose images differ in "
            "size must be evaluated with --batch-size 1"
        )
    return default_collate(batch)


def build_loader(args: argparse.Namespace) -> tuple[Any, DataLoader]:
    """The dataset (for its ``info``) and this process's loader over it."""
    transforms = build_eval_transforms(test_scale(args))
    kwargs = {}
    if args.dataset.lower() == "folder":
        kwargs = dict(config=folder_settings(args.checkpoint)[0])
    elif args.dataset.lower() == "synthetic-context":
        size = tuple(args.synthetic_size)
        kwargs = dict(length=args.synthetic_length, seed=args.synthetic_seed, size=size)
    dataset = build_dataset(args.dataset, args.data_root, args.split, transforms, **kwargs)
    info = dataset.info
    if args.limit is not None:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=ShardSampler(len(dataset)),
        num_workers=args.workers,
        collate_fn=collate_same_size,
        pin_memory=args.device.startswith("cuda"),
    )
    return info, loader


def main(argv: list[str] | None = None, prog: str = "isa-explorer evaluate") -> int:
    args = parse_args(argv, prog)
    try:
        return run(args)
    except (OSError, ValueError) as err:  # missing data/model, zoo download, bad options
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` say; print the table on the first process, write JSON."""
    dist_info = setup_distributed(args.device)
    rank, world_size, device = dist_info.rank, dist_info.world_size, str(dist_info.device)
    args.device = device
    try:
        info, loader = build_loader(args)
        model = load_model(args.checkpoint, device=device, for_inference=True)
        resolve_test_mode(args)
        if model.classes != info.num_classes:
            raise ValueError(
                f"the model predicts {model.classes} classes but {info.name} has "
                f"{info.num_classes}; evaluate it on the dataset it was trained for"
            )
        scales = MS_SCALES if args.ms else (1.0,)
        start = time.perf_counter()
        metrics = evaluate(
            model,
            loader,
            info.num_classes,
            mode=args.mode,
            crop_size=tuple(args.crop),
            stride=tuple(args.stride),
            scales=scales,
            flip=args.flip,
            device=device,
            progress=not args.no_progress,
            ignore_index=info.ignore_index,
            class_names=info.class_names,
        )
        seconds = time.perf_counter() - start
    finally:
        cleanup_distributed()
    if rank != 0:
        return 0
    print(format_table(metrics, info.class_names))
    print(f"{metrics['num_images']} image(s) in {seconds:.1f} s on {world_size} process(es)")
    if args.json is not None:
        record = {
            **metrics,
            "checkpoint": str(args.checkpoint) if args.checkpoint else "default",
            "dataset": info.name,
            "split": args.split,
            "mode": args.mode,
            "crop_size": list(args.crop) if args.mode == "slide" else None,
            "stride": list(args.stride) if args.mode == "slide" else None,
            "scales": list(scales),
            "flip": args.flip,
            "test_scale": test_scale(args),
            "world_size": world_size,
            "seconds": round(seconds, 3),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(record), indent=2) + "\n")
        print(f"metrics written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
