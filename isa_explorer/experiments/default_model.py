"""Export the context experiment's models as the embedded default models.

After ``isa-explorer experiment context`` (``results/context_experiment.json``),
``isa-explorer experiment default-model`` writes ``isa_explorer/assets/default_models/``:

- ``encoder.safetensors``: the shared encoder, once, in float16;
- ``HEAD/``: per head, its best seed (by validation mIoU): ``head.safetensors`` (the head's
  tensors, float16), ``config.json`` (smp's, naming the shared encoder file), ``training.json``
  (the run, its config and the held-out scores of the exported float16 model beside the run's
  float32 ones) and ``MODEL_CARD.md``.

They load back as float32 (:func:`isa_explorer.pretrained.load_default_model`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file

from isa_explorer import heads as registry
from isa_explorer.data.synthetic import SYNTHETIC_CONTEXT_CLASSES, SYNTHETIC_INFO
from isa_explorer.experiments.report import cue_summary
from isa_explorer.experiments.scores import HELD_OUT_SEED, cue_attention_ratio, held_out_metrics
from isa_explorer.pretrained import DEFAULT_MODELS_DIR, load_model

ENCODER_FILE = "encoder.safetensors"

_CARD = """# ISA Explorer default model: the `{head}` head

{doc}

**Model.** ISANet with a timm ResNet-10-T encoder (`{encoder_name}`, output stride {stride},
random initialisation: no ImageNet weights) shared by all the default models, and the `{head}`
head ({channels} channels), {params:.2f} M parameters of which {head_params:.2f} M in the head,
stored in float16 (head {head_mb:.1f} MB; the shared encoder {encoder_mb:.1f} MB, once).

**Data.** The synthetic long-range-context scenes of `isa_explorer/data/synthetic.py`
({size[0]}x{size[1]}), {classes} classes: {class_list}. The classes `object-red-context` and
`object-blue-context` are grey shapes that only the coloured cue at the far edge of the image
tells apart.

**Training.** `isa-explorer experiment context`: the encoder trained end to end with the FCN
head (`synthetic-context` recipe), then frozen; this head trained alone on it with the same
recipe ({iters} iterations, batch {batch_size}, SGD lr {lr}, poly schedule), seed {seed}, the
best of seeds {seeds} by validation mIoU. Measured {spi} s per iteration while training.
Exported with `isa-explorer experiment default-model`. Every seed and head, and what the
experiment finds: `results/context_experiment.md` in the repository.

**Scores** of this float16 model on {n_eval} held-out scenes (seed {heldout}, used by no training
run and not for choosing the seed): mIoU **{mIoU:.3f}**, context classes mIoU **{ctx:.3f}**
({ctx_detail}); the float32 run scored {run_mIoU:.3f} and {run_ctx:.3f}.

**Attention.** {attention}

Per-class IoU: {per_class}.

**Limits.** It knows only the synthetic scenes: on photographs it predicts nonsense. Load a
model trained on real data (`python app.py --checkpoint DIR`) for those.
"""


def _attention(cue: dict | None) -> str:
    if cue is None:
        return "This head has no attention map: it sees the cue only through its convolutions."
    return (
        f"A query on a context object, `{cue['map']}` map, mass on the cue relative to the "
        "cue's area share (1 = spread evenly), median over held-out scenes: "
        + ", ".join(
            f"`{name}` **{v['median']:.1f}x** ({v['count']} queries)"
            for name, v in cue["by_class"].items()
        )
        + "."
    )


def export_default_models(
    results: str | Path = "results/context_experiment.json",
    out_dir: str | Path = DEFAULT_MODELS_DIR,
    n_eval: int = 128,
) -> dict[str, dict]:
    """Write the shared encoder once and each compared head's best seed to ``out_dir``.

    Returns:
        ``{head: training.json content}``.

    Raises:
        ValueError: A head's run changed the shared encoder (it was not frozen).
    """
    res = json.loads(Path(results).read_text())
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    infos: dict[str, dict] = {}
    for key, summary in res["heads"].items():
        if summary["kind"] != "head-only":
            continue
        head = summary["head"]
        row = next(r for r in res["runs"]
                   if (r["kind"], r["head"], r["seed"]) == ("head-only", head, summary["best_seed"]))  # fmt: skip
        if not row.get("encoder_unchanged"):
            raise ValueError(f"{row['run_dir']} changed the shared encoder; train it frozen")
        model = load_model(Path(row["run_dir"]) / "final").half()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if not (tmp / ENCODER_FILE).exists():
            save_file(
                {k: v for k, v in state.items() if k.startswith("encoder.")}, tmp / ENCODER_FILE
            )
        (tmp / head).mkdir()
        save_file({k: v for k, v in state.items() if not k.startswith("encoder.")},
                  tmp / head / "head.safetensors")  # fmt: skip
        config = {
            "_model_class": "ISANet",
            **model.config,
            "_encoder_weights": f"../{ENCODER_FILE}",
        }
        (tmp / head / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        exported = load_model(tmp / head)  # as users load it: float16 weights, float32 model
        run_cfg = json.loads((Path(row["run_dir"]) / "config.json").read_text())
        size = tuple(run_cfg["synthetic"]["size"])
        metrics = held_out_metrics(exported, size=size, n_images=n_eval, progress=True)
        cue = cue_attention_ratio(exported, size=size) if registry.get(head).maps else None
        info = {
            "head": head,
            "size": list(size),
            "command": res.get("command", "isa-explorer experiment context"),
            "run": {
                k: row[k]
                for k in (
                    "run_dir",
                    "seed",
                    "overrides",
                    "val_mIoU",
                    "mIoU",
                    "context_mIoU",
                    "sec_per_iter_in_run",
                )
            },  # fmt: skip
            "seeds": summary["seeds"],
            "config": run_cfg,
            "held_out": {k: metrics[k] for k in ("mIoU", "mAcc", "aAcc", "IoU", "context_mIoU")}
            | {"seed": HELD_OUT_SEED, "images": n_eval, "weights": "float16"},
            "cue_attention": cue,
        }
        (tmp / head / "training.json").write_text(json.dumps(info, indent=2))
        params = sum(p.numel() for p in exported.parameters())
        card = _CARD.format(
            head=head,
            doc=(inspect.getdoc(registry.get(head)) or "").split("\n\n")[0],
            encoder_name=model.config["encoder_name"],
            stride=exported.output_stride,
            channels=model.config["decoder_channels"],
            params=params / 1e6,
            head_params=sum(p.numel() for p in exported.decoder.parameters()) / 1e6,
            head_mb=(tmp / head / "head.safetensors").stat().st_size / 2**20,
            encoder_mb=(tmp / ENCODER_FILE).stat().st_size / 2**20,
            size=size,
            classes=SYNTHETIC_INFO.num_classes,
            class_list=", ".join(f"`{n}`" for n in SYNTHETIC_INFO.class_names),
            iters=run_cfg["iters"],
            batch_size=run_cfg["batch_size"],
            lr=run_cfg["lr"],
            seed=row["seed"],
            seeds=", ".join(map(str, summary["seeds"])),
            spi=f"{row['sec_per_iter_in_run']:.2f}" if row.get("sec_per_iter_in_run") else "?",
            n_eval=n_eval,
            heldout=HELD_OUT_SEED,
            mIoU=metrics["mIoU"],
            ctx=metrics["context_mIoU"],
            ctx_detail=", ".join(
                f"{SYNTHETIC_INFO.class_names[c]} {metrics['IoU'][c]:.3f}"
                for c in SYNTHETIC_CONTEXT_CLASSES
            ),
            run_mIoU=row["mIoU"],
            run_ctx=row["context_mIoU"],
            attention=_attention(cue),
            per_class=", ".join(
                f"{n} {v:.3f}"
                for n, v in zip(SYNTHETIC_INFO.class_names, metrics["IoU"], strict=True)
            ),
        )
        (tmp / head / "MODEL_CARD.md").write_text(card)
        infos[head] = info
        print(f"{key}: seed {row['seed']}, held-out mIoU {metrics['mIoU']:.3f}, context "
              f"{metrics['context_mIoU']:.3f}, cue {cue_summary({'cue_attention': cue or {}})}")  # fmt: skip
    for file in tmp.rglob("*.safetensors"):
        file.chmod(0o644)  # safetensors writes owner-only files; package data is world-readable
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return infos


def main(
    argv: Sequence[str] | None = None, prog: str = "isa-explorer experiment default-model"
) -> int:
    """CLI: ``isa-explorer experiment default-model [--results JSON] [--out DIR]``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="export the context experiment's best runs as the default models"
    )
    parser.add_argument("--results", default="results/context_experiment.json",
                        help="the experiment's results (its runs must be on this machine)")  # fmt: skip
    parser.add_argument("--out", default=str(DEFAULT_MODELS_DIR))
    parser.add_argument("--eval-images", type=int, default=128)
    args = parser.parse_args(argv)
    infos = export_default_models(args.results, args.out, args.eval_images)
    total = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"wrote {len(infos)} heads to {args.out}: {total / 2**20:.1f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
