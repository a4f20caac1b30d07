"""What each head buys: the controlled long-range experiment on the synthetic context scenes.

Labels of the grey objects in the scenes of :mod:`isa_explorer.data.synthetic` are decided by a
coloured cue far away. The experiment asks which heads bring that cue to the object:

1. **One shared encoder** (``runs_dir/encoder``): the ``synthetic-context`` recipe with the FCN
   head alone, end to end. FCN is the part every other head builds on (mmseg's NL, CC, GC and
   DA heads are its subclasses, ISA and EMA have the same bottleneck), so the encoder learns
   what all heads share and no attention head shapes its features; it is also one run, where
   seven heads summed would cost seven heads' steps and weigh their gradients by chance.
2. **Every head alone on it, frozen** (``runs_dir/heads/HEAD/seedS``): the same recipe with
   ``freeze_encoder=true`` and the encoder run's weights, the same widths (128 channels; EMA's
   ``ema_channels`` 128), the same schedule; the runs differ only in the head and the seed.
3. **Scores** on held-out scenes (:data:`~isa_explorer.experiments.scores.HELD_OUT_SEED`) that
   neither training nor the choice of a seed sees (the best seed is the one with the best
   validation mIoU): mIoU, mIoU of the context classes, the cue attention of heads with a
   spatial map; the time and memory of each head's training step, in a fresh process per head.
4. **Reference**: end-to-end runs of ISA and dense attention (``runs_dir/end-to-end/HEAD``),
   the experiment as it was first run, with the encoder trained for the head.

``isa-explorer experiment context`` writes ``results/context_experiment.{json,md}``. A run whose
``final/`` model exists is reused (after checking its config), an interrupted one resumes from
its last checkpoint, and a run's scores are kept in its ``held_out.json``: stop it any time and
run the same command again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from isa_explorer import heads as registry
from isa_explorer.data.synthetic import SYNTHETIC_INFO
from isa_explorer.experiments.report import format_results
from isa_explorer.experiments.scores import HELD_OUT_SEED, cue_attention_ratio, held_out_metrics

#: The heads compared on the shared encoder (each with an embedded default model).
COMPARED = ("fcn", "isa", "nl", "cc", "da", "gc", "ema")
#: The heads of the end-to-end reference runs.
REFERENCE = ("isa", "dense")
#: Training seeds of each head-only run.
SEEDS = (0, 1)
#: The head trained with the shared encoder.
ENCODER_HEAD = "fcn"
#: Options that give a head the same width as the others (EMA's published 512 is 4x theirs).
WIDTH_OPTIONS = {"ema": ['model.head_options={"ema_channels": 128}']}


@dataclass
class Run:
    """One training run of the experiment: ``kind`` is ``"encoder"``, ``"head-only"`` or
    ``"end-to-end"``; ``overrides`` its ``synthetic-context`` config overrides."""

    kind: str
    head: str
    seed: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)


def encoder_weights(runs_dir: str | Path) -> Path:
    """The shared encoder's weights: the encoder run's final model."""
    return Path(runs_dir) / "encoder" / "final" / "model.safetensors"


def plan(
    runs_dir: str | Path,
    heads: Sequence[str] = COMPARED,
    seeds: Sequence[int] = SEEDS,
    reference: Sequence[str] = REFERENCE,
    overrides: Sequence[str] = (),
) -> list[Run]:
    """The runs of the experiment, in training order (the encoder first)."""
    runs_dir = Path(runs_dir)
    runs = [Run("encoder", ENCODER_HEAD, 0, runs_dir / "encoder",
                [*overrides, f"model.head={ENCODER_HEAD}"])]  # fmt: skip
    frozen = [f"model.encoder_weights={encoder_weights(runs_dir)}", "freeze_encoder=true"]
    for seed in seeds:
        for head in heads:
            sets = [*overrides, f"model.head={head}", *frozen, f"seed={seed}"]
            sets += WIDTH_OPTIONS.get(head, [])
            runs.append(
                Run("head-only", head, seed, runs_dir / "heads" / head / f"seed{seed}", sets)
            )
    for head in reference:
        sets = [*overrides, f"model.head={head}", *WIDTH_OPTIONS.get(head, [])]
        runs.append(Run("end-to-end", head, 0, runs_dir / "end-to-end" / head, sets))
    return runs


def ensure_trained(run: Run, progress: bool = True) -> None:
    """Train ``run`` unless its ``final/`` model exists (then check it was trained with this
    config); an interrupted run resumes from its checkpoint.

    Raises:
        ValueError: The run directory holds a run of another config.
    """
    from isa_explorer.configs import get_config
    from isa_explorer.training import train
    from isa_explorer.training.steps import check_resume_config

    cfg = get_config("synthetic-context", run.overrides)
    if (run.run_dir / "final").is_dir():
        saved = json.loads((run.run_dir / "config.json").read_text())
        try:
            check_resume_config(saved, cfg.to_dict())
        except ValueError as e:
            raise ValueError(
                f"{run.run_dir} holds a run of another config ({e}); remove it or pass another "
                "--runs-dir"
            ) from None
        return
    resume = (run.run_dir / "checkpoints" / "last.pt").exists()
    train(cfg, run.run_dir, resume=resume, progress=progress)


def score(run: Run, n_eval: int, shared: dict[str, torch.Tensor] | None, progress: bool) -> dict:
    """The run's row: validation and held-out scores, cue attention; kept in ``held_out.json``
    and read back from it when it was made of the same weights for the same number of scenes."""
    from isa_explorer.pretrained import load_model

    cache = run.run_dir / "held_out.json"
    weights = hashlib.sha256((run.run_dir / "final" / "model.safetensors").read_bytes()).hexdigest()
    if cache.is_file():
        row = json.loads(cache.read_text())
        if (row.get("held_out_images"), row.get("weights_sha256")) == (n_eval, weights):
            return row
    summary = json.loads((run.run_dir / "metrics.json").read_text())
    model = load_model(run.run_dir / "final")
    size = tuple(json.loads((run.run_dir / "config.json").read_text())["synthetic"]["size"])
    metrics = held_out_metrics(model, size=size, n_images=n_eval, progress=progress)
    row = {
        "kind": run.kind,
        "head": run.head,
        "seed": run.seed,
        "run_dir": str(run.run_dir),
        "overrides": run.overrides,
        "val_mIoU": summary["final_metrics"]["mIoU"],
        "mIoU": metrics["mIoU"],
        "context_mIoU": metrics["context_mIoU"],
        "IoU": dict(zip(SYNTHETIC_INFO.class_names, metrics["IoU"], strict=True)),
        "params": sum(p.numel() for p in model.parameters()),
        "head_params": sum(p.numel() for p in model.decoder.parameters()),
        "sec_per_iter_in_run": summary.get("sec_per_iter"),
        "held_out_images": n_eval,
        "weights_sha256": weights,
    }
    if shared is not None:  # the head-only runs must leave the shared encoder as it was
        state = model.state_dict()
        row["encoder_unchanged"] = all(
            torch.equal(state[k], v.to(state[k].dtype)) for k, v in shared.items()
        )
    if registry.get(run.head).maps:  # heads without attention maps have none to analyse
        row["cue_attention"] = cue_attention_ratio(model, size=size)
    cache.write_text(json.dumps(row, indent=2))
    return row


def run_experiment(
    runs_dir: str | Path,
    heads: Sequence[str] = COMPARED,
    seeds: Sequence[int] = SEEDS,
    reference: Sequence[str] = REFERENCE,
    overrides: Sequence[str] = (),
    n_eval: int = 128,
    progress: bool = True,
    time_steps: bool = True,
) -> dict:
    """Train (or reuse) every run of :func:`plan`, score each on held-out scenes and time each
    head's training step afresh (unless ``time_steps`` is false).

    Returns:
        ``{"runs": [row per run, with "kind", "head", "seed"], "heads": {head: summary},
        "encoder": ..., "held_out": ..., "environment": ...}``.
    """
    from isa_explorer.bench.worker import run_worker
    from isa_explorer.configs import get_config

    runs = plan(runs_dir, heads, seeds, reference, overrides)
    for run in runs:
        ensure_trained(run, progress)
    shared = {k: v for k, v in load_file(encoder_weights(runs_dir)).items() if k[:8] == "encoder."}
    rows = [score(r, n_eval, shared if r.kind == "head-only" else None, progress) for r in runs]
    summaries: dict[str, dict] = {}
    # Training runs may have shared the machine differently: time one step of each head afresh.
    for run in runs:
        key = run.head if run.kind == "head-only" else f"{run.head} ({run.kind})"
        if key not in summaries:
            summaries[key] = {
                "kind": run.kind,
                "head": run.head,
                "train_step": run_worker("train-step", {"overrides": run.overrides})
                if time_steps
                else {"status": "skipped"},
            }
    for summary in summaries.values():
        mine = [r for r in rows if r["head"] == summary["head"] and r["kind"] == summary["kind"]]
        best = max(mine, key=lambda r: r["val_mIoU"])  # chosen on validation, not held-out
        summary["best_seed"] = best["seed"]
        summary["seeds"] = [r["seed"] for r in mine]
        for metric in ("mIoU", "context_mIoU"):
            values = [r[metric] for r in mine]
            summary[metric] = {"mean": sum(values) / len(values), "min": min(values),
                               "max": max(values)}  # fmt: skip
    return {
        "runs": rows,
        "heads": summaries,
        "encoder": {
            "head": ENCODER_HEAD,
            "weights": str(encoder_weights(runs_dir)),
            "run_dir": str(runs[0].run_dir),
        },
        "config": get_config("synthetic-context", overrides).to_dict(),  # each run: its overrides
        "overrides": list(overrides),
        "held_out": {"seed": HELD_OUT_SEED, "images": n_eval},
        "environment": {
            "torch": torch.__version__,
            "device": "cuda" if torch.cuda.is_available() else platform.processor() or "cpu",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer experiment context") -> int:
    """CLI: train/reuse every run, score them, write JSON and a Markdown report."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs/context", help="parent of the runs")
    parser.add_argument("--heads", nargs="+", default=list(COMPARED), choices=registry.names())
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--reference", nargs="*", default=list(REFERENCE),
                        choices=registry.names(), help="heads of the end-to-end reference runs")  # fmt: skip
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. iters=200")  # fmt: skip
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--no-step-timing", action="store_true",
                        help="do not time each head's training step (a fresh process each)")  # fmt: skip
    parser.add_argument("--out", default="results/context_experiment.json")
    args = parser.parse_args(argv)
    results = run_experiment(
        args.runs_dir, args.heads, args.seeds, args.reference, args.set, args.eval_images,
        time_steps=not args.no_step_timing,
    )  # fmt: skip
    results["command"] = " ".join([prog, *(argv if argv is not None else sys.argv[1:])])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    report = format_results(results)
    out.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
