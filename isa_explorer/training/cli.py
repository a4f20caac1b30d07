"""Train a model with a published mmseg recipe, your own data or the synthetic recipe, on the
CPU, a GPU or many.

Examples:
    python train/fit.py --list
    python train/fit.py --config synthetic-context --run-dir runs/synthetic
    python train/fit.py --resume --run-dir runs/synthetic
    torchrun --nproc_per_node 4 train/fit.py --config isanet_r50-d8_4xb2-40k_cityscapes-512x1024 \\
        --data-root data/cityscapes --run-dir runs/cs-r50
    torchrun --nproc_per_node 4 train/fit.py --config danet_r50-d8_4xb2-40k_cityscapes-512x1024 \\
        --data-root data/cityscapes
    python train/fit.py --config runs/synthetic/config.json --run-dir runs/again   # reproduce
    python train/fit.py --config synthetic-context --set iters=200 --set model.decoder_channels=64
    python train/fit.py --config folder --data-root my_data --check-data    # your own data
    python train/fit.py --config folder --head ema --data-root my_data --classes sky,road,car \\
        --set crop_size=[256,256] --set iters=4000 --run-dir runs/mine

``--config`` takes a name from ``--list`` or a ``config.json`` written by an earlier run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from isa_explorer import heads
from isa_explorer.configs import (
    CONFIGS,
    HEAD_RECIPES,
    PUBLISHED,
    TrainConfig,
    apply_overrides,
    folder_config,
    get_config,
)
from isa_explorer.safe_load import CheckpointFileError
from isa_explorer.training import NonFiniteLossError, fetch_encoder_weights, train


def parse_args(argv: list[str] | None = None, prog: str = "isa-explorer fit") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="config name (see --list) or path of a config.json")
    p.add_argument("--run-dir", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (JSON values; model.KEY for model arguments); repeatable",
    )
    p.add_argument(
        "--head",
        help=f"--config folder: the head to train ({', '.join(heads.names())}; default isa)",
    )
    p.add_argument(
        "--encoder-weights",
        metavar="WEIGHTS",
        help="'imagenet' (download; every recipe but synthetic-context), 'none' (random init) or "
        "FILE, the path of a local weight file of the encoder",
    )
    p.add_argument("--data-root", help="dataset folder (overrides the config's data_root)")
    p.add_argument(
        "--classes", help="folder dataset: class names, comma-separated (else root/classes.json)"
    )
    p.add_argument(
        "--check-data",
        action="store_true",
        help="folder dataset: scan every image/mask pair, print the report and exit",
    )
    p.add_argument(
        "--allow-data-issues",
        action="store_true",
        help="folder dataset: train even if the data check found problems",
    )
    p.add_argument("--list", action="store_true", help="list the configs and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--debug-rank-weights",
        action="store_true",
        help="debugging: every process writes its final weights to RUN_DIR/debug/rankR.pt",
    )
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The effective config and run directory of the command line."""
    overrides = list(args.overrides)
    if args.encoder_weights is not None:
        value = args.encoder_weights
        overrides.append(f"model.encoder_weights={'none' if value.lower() == 'none' else value}")
        if value.lower() not in ("none", "imagenet") and not Path(value).expanduser().is_file():
            raise FileNotFoundError(
                f"--encoder-weights {value}: no such file; pass none, imagenet or a local "
                ".safetensors / .pt file holding the encoder's weights"
            )
    if args.data_root is not None:
        overrides.append(f"data_root={args.data_root}")
    if args.classes is not None:
        overrides.append(f"folder.classes={args.classes}")
    name = args.config
    if name is None:
        if not (args.resume and args.run_dir):
            raise ValueError("pass --config NAME (see --list), or --resume --run-dir DIR")
        name = str(Path(args.run_dir) / "config.json")
    if args.head is None:
        cfg = get_config(name, overrides)
    elif name == "folder":
        cfg = apply_overrides(folder_config(args.head), overrides)
    else:
        heads.get(args.head)  # a registered head (else the error lists them)
        published = PUBLISHED.get(args.head)
        pick = (
            f"pick one of the {args.head} head's published recipes "
            f"({', '.join(published[:2])}, ... in --list), or "
            if published
            else ""
        )
        raise ValueError(
            f"--head is for --config folder (your own data), not {name!r}: {pick}keep this "
            f"recipe and pass --set model.head={args.head}"
        )
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    return cfg, run_dir


def format_config_list() -> str:
    """The ``--list`` text: the published recipes grouped by model (mmseg's name and the head),
    then the others; a row per config: dataset, training crop, base scale (H x W; the 769x769
    Cityscapes recipes' is 1025x2049), iterations, batch per GPU and test mode."""
    width = max(map(len, CONFIGS))

    def row(
        name: str, dataset: str, crop: str, scale: str, iters: str, batch: str, test: str
    ) -> str:
        return (
            f"  {name:{width}s}  {dataset:17s}  {crop:8s}  {scale:9s}  {iters:>6s}  {batch:>5s}  "
            f"{test}"
        )

    def pair(value: tuple[int, int] | None) -> str:
        return "x".join(map(str, value)) if value else "-"

    groups = [
        (f"{HEAD_RECIPES[head][0]} (head {head}): {len(names)} published recipes", names)
        for head, names in PUBLISHED.items()
    ]
    listed = {name for _, names in groups for name in names}
    others = [name for name in CONFIGS if name not in listed]
    groups.append(("synthetic data, and your own (--config folder --head NAME: any head)", others))
    lines = [row("config", "dataset", "crop", "scale", "iters", "batch", "test")]
    for title, names in groups:
        lines.append(title)
        for name in names:
            cfg = CONFIGS[name]
            lines.append(
                row(name, cfg.dataset, pair(cfg.crop_size), pair(cfg.scale), str(cfg.iters),
                    str(cfg.batch_size), cfg.evaluation.mode)
            )  # fmt: skip
    return "\n".join(lines)


def _check_folder_data(cfg: TrainConfig, args: argparse.Namespace) -> int | None:
    """Run the data check of a folder dataset; an exit code if training must not start."""
    from isa_explorer.data.folder_check import check_folder

    try:
        if cfg.dataset != "folder":
            raise ValueError(f"--check-data is for the folder dataset, not {cfg.dataset}")
        if cfg.data_root is None:
            raise ValueError("the folder dataset needs --data-root DIR")
        splits = (cfg.train_split, cfg.val_split)
        report = check_folder(cfg.data_root, cfg.folder, rescan=args.check_data, splits=splits)
    except (OSError, ValueError) as e:  # not a folder run, no such folder, no class names
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check_data:
        print(report.format())
        return 0 if report.ok else 1
    if not report.ok and not args.allow_data_issues:
        print(report.format(), file=sys.stderr)
        print(
            "error: the data check found problems (above); fix them, or pass "
            "--allow-data-issues to train anyway (bad values and colours become ignore)",
            file=sys.stderr,
        )
        return 1
    if int(os.environ.get("RANK", "0")) == 0 and (report.warnings or not report.ok):
        print(report.format())
    return None


def main(argv: list[str] | None = None, prog: str = "isa-explorer fit") -> int:
    args = parse_args(argv, prog)
    if args.list:
        print(format_config_list())
        return 0
    try:
        cfg, run_dir = build_config(args)
        if not args.check_data:  # the encoder's named weights first: none, no data read
            fetch_encoder_weights(cfg.model)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if cfg.dataset == "folder" or args.check_data:
        code = _check_folder_data(cfg, args)
        if code is not None:
            return code
    try:
        result = train(
            cfg,
            run_dir,
            resume=args.resume,
            progress=not args.no_progress,
            debug_rank_weights=args.debug_rank_weights,
        )
    # nan/inf, an existing run, a damaged file, a run that cannot resume
    except (NonFiniteLossError, FileExistsError, CheckpointFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"finished {cfg.name}: best mIoU {100 * result['best_mIoU']:.2f}, final mIoU "
            f"{100 * result['final_metrics']['mIoU']:.2f}, {result['sec_per_iter']:.3f} s/iter, "
            f"peak memory {result['peak_memory_bytes'] / 2**20:.0f} MiB; run dir {run_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
