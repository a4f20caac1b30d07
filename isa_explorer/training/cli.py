"""Train ISANet with a published mmseg recipe or the synthetic one, on the CPU, a GPU or many.

Examples:
    python train/fit.py --list
    python train/fit.py --config synthetic-context --run-dir runs/synthetic
    python train/fit.py --resume --run-dir runs/synthetic
    torchrun --nproc_per_node 4 train/fit.py --config isanet_r50-d8_4xb2-40k_cityscapes-512x1024 \\
        --data-root data/cityscapes --run-dir runs/cs-r50
    python train/fit.py --config runs/synthetic/config.json --run-dir runs/again   # reproduce
    python train/fit.py --config synthetic-context --set iters=200 --set model.decoder_channels=64
    python train/fit.py --config folder --data-root my_data --check-data    # your own data
    python train/fit.py --config folder --data-root my_data --classes sky,road,car \
        --set crop_size=[256,256] --set iters=4000 --run-dir runs/mine

``--config`` takes a name from ``--list`` or a ``config.json`` written by an earlier run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from isa_explorer.configs import CONFIGS, TrainConfig, get_config
from isa_explorer.safe_load import CheckpointFileError
from isa_explorer.training import NonFiniteLossError, train


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
        "--encoder-weights",
        help="'none' (random init), 'imagenet' (download) or the path of a local weight file",
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
    cfg = get_config(name, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.name
    return cfg, run_dir


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
        for name, cfg in CONFIGS.items():
            print(f"{name:48s} {cfg.dataset:18s} {cfg.iters:>7d} iters  batch {cfg.batch_size}")
        return 0
    try:
        cfg, run_dir = build_config(args)
    except (KeyError, ValueError, FileNotFoundError) as e:
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
