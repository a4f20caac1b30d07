"""Export a ``synthetic-context`` training run as the embedded default model.

After ``python train/fit.py --config synthetic-context --run-dir runs/context/isa``,
``isa-explorer experiment default-model runs/context/isa`` writes
``isa_explorer/assets/default_model/``: the weights in float16 safetensors (half the size; they
load back as float32), smp's ``config.json``, ``training.json`` (the effective training config
and the held-out scores) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from isa_explorer.data.synthetic import SYNTHETIC_CONTEXT_CLASSES, SYNTHETIC_INFO, SyntheticConfig
from isa_explorer.experiments.context import HELD_OUT_SEED, cue_attention_ratio, held_out_metrics
from isa_explorer.pretrained import DEFAULT_MODEL_DIR, load_model, resolve_model_dir

_CARD = """# ISA Explorer default model

ISANet with a timm ResNet-10-T encoder (`{encoder_name}`, output stride {stride}, random
initialisation: no ImageNet weights) and the ISA head (channels {decoder_channels}, isa channels
{decoder_isa_channels}, groups 8x8, order long-short), {params:.2f} M parameters, stored in float16
({size_mb:.1f} MB).

**Data.** The synthetic long-range-context scenes of `isa_explorer/data/synthetic.py`
({size[0]}x{size[1]}), {classes} classes: {class_list}. The classes `object-red-context` and
`object-blue-context` are grey shapes that only the coloured cue at the far edge of the image
tells apart.

**Training.** `{command}` ({iters} iterations, batch {batch_size}, SGD lr {lr}, poly schedule;
training seed {seed}, validation seed {val_seed}), then
`isa-explorer experiment context` for the scores and
`isa-explorer experiment default-model RUN_DIR` to export. Measured {spi} s per
iteration on {device}.

**Scores** on {n_eval} held-out scenes (seed {heldout}, used by no training or validation run):
mIoU **{metrics[mIoU]:.3f}**, context classes mIoU **{metrics[context_mIoU]:.3f}** ({ctx_detail}).

**Attention.** A query on a context object, combined map (long-range then short-range), mass on
the cue relative to the cue's area share (1 = spread evenly), median over held-out scenes:
{cue_detail}. The model learned to look for one cue colour and to decide the other context by
its absence: queries of one context class put most of their attention on the cue, the others
look for it and find nothing there.

Per-class IoU: {per_class}.

**Limits.** It knows only the synthetic scenes: on photographs it predicts nonsense. Load a
model trained on real data (`python app.py --checkpoint DIR`) for those.
"""


def export_default_model(
    run_dir: str | Path, out_dir: str | Path = DEFAULT_MODEL_DIR, n_eval: int = 128
) -> dict:
    """Score the run's model on held-out scenes and write it, with its card, to ``out_dir``.

    Returns:
        The ``training.json`` content (config, held-out metrics, cue attention).
    """
    run_dir = Path(run_dir)
    model_dir = resolve_model_dir(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    summary_path = run_dir / "metrics.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    size = SyntheticConfig.from_dict(config.get("synthetic", {})).size
    model = load_model(model_dir)
    metrics = held_out_metrics(model, size=size, n_images=n_eval, progress=True)
    cue = cue_attention_ratio(model, size=size)

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp)
    model.float()
    (tmp / "README.md").unlink(missing_ok=True)  # smp's hub card; MODEL_CARD.md replaces it
    info = {
        "size": list(size),
        "command": f"python train/fit.py --config synthetic-context --run-dir {run_dir}",
        "config": config,
        "train_summary": summary,
        "held_out": {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc", "IoU", "context_mIoU")}
        | {"seed": HELD_OUT_SEED, "images": n_eval},
        "cue_attention": cue,
    }
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    mcfg = config.get("model", {})
    card = _CARD.format(
        **{k: mcfg.get(k) for k in ("encoder_name", "decoder_channels", "decoder_isa_channels")},
        stride=model.output_stride,
        params=sum(p.numel() for p in model.parameters()) / 1e6,
        size_mb=(tmp / "model.safetensors").stat().st_size / 2**20,
        size=size,
        classes=SYNTHETIC_INFO.num_classes,
        class_list=", ".join(f"`{n}`" for n in SYNTHETIC_INFO.class_names),
        command=info["command"],
        **{k: config.get(k) for k in ("iters", "batch_size", "lr", "seed")},
        val_seed=config.get("synthetic", {}).get("val_seed"),
        spi=f"{summary['sec_per_iter']:.2f}" if summary.get("sec_per_iter") else "?",
        device=summary.get("device", "a 2-core CPU"),
        n_eval=n_eval,
        heldout=HELD_OUT_SEED,
        metrics=metrics,
        ctx_detail=", ".join(
            f"{SYNTHETIC_INFO.class_names[c]} {metrics['IoU'][c]:.3f}"
            for c in SYNTHETIC_CONTEXT_CLASSES
        ),
        cue_detail=", ".join(
            f"`{name}` **{v['median']:.1f}x** ({v['count']} queries)"
            for name, v in cue["by_class"].items()
        ),
        per_class=", ".join(
            f"{n} {v:.3f}" for n, v in zip(SYNTHETIC_INFO.class_names, metrics["IoU"], strict=True)
        ),
    )
    (tmp / "MODEL_CARD.md").write_text(card)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return info


def main(
    argv: Sequence[str] | None = None, prog: str = "isa-explorer experiment default-model"
) -> int:
    """CLI: ``isa-explorer experiment default-model RUN_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="export a synthetic-context run as the default"
    )
    parser.add_argument("run_dir", help="a train/fit.py --config synthetic-context run directory")
    parser.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--eval-images", type=int, default=128)
    args = parser.parse_args(argv)
    info = export_default_model(args.run_dir, args.out, args.eval_images)
    print(json.dumps(info["held_out"], indent=2))
    print(f"cue attention by class {info['cue_attention']['by_class']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
