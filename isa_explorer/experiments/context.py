"""Why long-range context matters: FCN vs ISA vs dense heads on the synthetic context scenes.

The same encoder and training recipe (``train/fit.py --config synthetic-context``) with three
heads: (a) ``fcn`` -- convolutions only, (b) ``isa`` -- interlaced sparse self-attention, (c)
``dense`` -- dense self-attention over all positions. Each is scored on a held-out split whose
seed no training or validation run uses: mIoU overall and on the classes only the far cue
decides, time per training iteration and peak memory; for the attention heads also how much of
a context object's attention lands on the cue (the combined map's mass on the cue, relative to
the cue's share of the image).

``isa-explorer experiment context`` writes ``results/context_experiment.json`` and ``.md``; a
head whose run (``runs/context/HEAD``) already holds ``final/`` is not trained again, so the run
of ``python train/fit.py --config synthetic-context --run-dir runs/context/isa`` is reused.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isa_explorer import heads as registry
from isa_explorer.attention import capture_attention, query_maps
from isa_explorer.data.synthetic import (
    SYNTHETIC_CONTEXT_CLASSES,
    SYNTHETIC_INFO,
    SyntheticConfig,
    SyntheticContextDataset,
    generate,
)
from isa_explorer.evaluation import evaluate
from isa_explorer.models.isanet import ISANet

#: The heads compared: every registered head (built in: ``isa``, ``dense``, ``fcn``).
HEADS = tuple(registry.names())
#: Seed of the held-out scenes: no config trains or validates on it.
HELD_OUT_SEED = 20261124
CUE_CLASSES = (1, 2)


def held_out_metrics(
    model: ISANet,
    size: tuple[int, int] = SyntheticConfig.size,
    n_images: int = 128,
    seed: int = HELD_OUT_SEED,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """mIoU of ``model`` on held-out synthetic scenes, overall and on the context classes.

    Returns:
        :func:`~isa_explorer.evaluation.evaluate`'s metrics plus ``"context_mIoU"`` (mean IoU of
        :data:`SYNTHETIC_CONTEXT_CLASSES`) and the split's ``seed``/``size``.
    """
    data = SyntheticContextDataset(length=n_images, seed=seed, size=size)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    device = next(model.parameters()).device
    metrics = evaluate(
        model, loader, SYNTHETIC_INFO.num_classes, device=device, progress=progress,
        class_names=SYNTHETIC_INFO.class_names,
    )  # fmt: skip
    metrics["context_mIoU"] = float(np.mean([metrics["IoU"][c] for c in SYNTHETIC_CONTEXT_CLASSES]))
    metrics.update(seed=seed, size=list(size))
    return metrics


def cue_attention_ratio(
    model: ISANet,
    size: tuple[int, int] = SyntheticConfig.size,
    n_scenes: int = 16,
    seed: int = HELD_OUT_SEED,
    map_name: str | None = None,
) -> dict:
    """How much more attention a context object pays to the cue than the cue's area share.

    For each scene, the query is a pixel well inside a context-decided object (class 3 or 4);
    its ``map_name`` map (default: the head's ``main_map``, ISA's combined one) is summed over
    the feature cells that lie mostly on the cue, and divided by the fraction of cells that do.
    A ratio of 1 is attention spread evenly; the cue is what decides the object's class. Per
    context class too: a model may find one cue colour and decide the other class by its absence
    (the shipped model looks for the red cue), so one class can attend to the cue and the other not.

    Returns:
        ``{"ratios": [...], "median": float, "min": float, "cue_share": [...], "classes": [...],
        "by_class": {name: {"median": float, "count": int}}, "map": map_name}``.
    """
    map_name = map_name or registry.of(model).main_map
    rng = np.random.default_rng(seed)
    ratios, shares, classes = [], [], []
    for index in range(n_scenes):
        image, labels = generate(seed, index, size)
        labels = torch.from_numpy(labels)
        mask = torch.isin(labels, torch.tensor(SYNTHETIC_CONTEXT_CLASSES))[None, None].float()
        objects = (-F.max_pool2d(-mask, 9, stride=1, padding=4))[0, 0] > 0.5  # eroded by 4 px
        ys, xs = torch.nonzero(objects, as_tuple=True)
        if len(ys) == 0:
            continue
        pick = int(rng.integers(len(ys)))
        cache = capture_attention(model, torch.from_numpy(image).permute(2, 0, 1))
        m = query_maps(cache, int(xs[pick]), int(ys[pick])).maps[map_name]  # (h, w) feature grid
        cue = torch.isin(labels, torch.tensor(CUE_CLASSES)).float()  # (H, W)
        cue_cells = cache.cell_mean(cue) > 0.5  # (h, w): cells mostly of cue pixels
        share = float(cue_cells.float().mean())
        if share == 0:
            continue
        ratios.append(float(m[cue_cells].sum() / m.sum()) / share)
        shares.append(share)
        classes.append(int(labels[ys[pick], xs[pick]]))
    by_class = {
        SYNTHETIC_INFO.class_names[c]: {"median": float(np.median(r)), "count": len(r)}
        for c in SYNTHETIC_CONTEXT_CLASSES
        if (r := [v for v, k in zip(ratios, classes, strict=True) if k == c])
    }
    return {
        "ratios": ratios,
        "median": float(np.median(ratios)),
        "min": float(np.min(ratios)),
        "cue_share": shares,
        "classes": classes,
        "by_class": by_class,
        "map": map_name,
    }


def train_step_cost(cfg_overrides: Sequence[str], steps: int = 6, warmup: int = 2) -> dict:
    """Median time and peak memory growth of one training step of a ``synthetic-context`` model.

    Runs in the calling process; :func:`run_experiment` runs it in a fresh process per head
    (:func:`train_step_worker`), so the heads are measured under the same conditions.
    """
    from isa_explorer.configs import get_config
    from isa_explorer.costs.measure import PeakMemory, median_ms, time_runs
    from isa_explorer.training.model import build_model
    from isa_explorer.training.steps import loss_weights, segmentation_loss

    cfg = get_config("synthetic-context", cfg_overrides)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, SYNTHETIC_INFO).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=cfg.momentum)
    data = SyntheticContextDataset(length=cfg.batch_size, seed=0, size=cfg.synthetic.size)
    images = torch.stack([data[i][0] for i in range(cfg.batch_size)]).float()
    masks = torch.stack([data[i][1] for i in range(cfg.batch_size)]).long()

    def step() -> None:
        outputs = model.forward_train(model.normalize(images))
        loss, _ = segmentation_loss(outputs, masks, loss_weights(model, 0.0), 255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # allocate the optimiser state before the memory baseline
    peak = PeakMemory().start()
    times = time_runs(step, runs=steps, warmup=warmup)
    return {"ms_per_step": median_ms(times), "peak_memory_bytes": peak.growth(),
            "batch": cfg.batch_size, "size": list(cfg.synthetic.size),
            "threads": torch.get_num_threads()}  # fmt: skip


def train_step_worker(spec: dict) -> dict:
    """:func:`train_step_cost` from a JSON spec, in a fresh process (:mod:`isa_explorer.bench.worker`)."""
    return {"status": "ok", **train_step_cost(spec["overrides"])}


def run_experiment(
    runs_dir: str | Path,
    heads: Sequence[str] = HEADS,
    overrides: Sequence[str] = (),
    n_eval: int = 128,
    progress: bool = True,
) -> dict:
    """Train (or reuse) one run per head with the same config, then score each on held-out data.

    Args:
        runs_dir: Parent of the per-head run directories ``runs_dir/<head>``.
        heads: Heads to compare.
        overrides: ``key=value`` overrides applied to every head's ``synthetic-context`` config.
        n_eval: Held-out scenes to score on.
        progress: Show progress bars.

    Returns:
        ``{"config": ..., "heads": {head: {...}}, "environment": ...}``.
    """
    from isa_explorer.bench.worker import run_worker
    from isa_explorer.configs import get_config
    from isa_explorer.pretrained import load_model
    from isa_explorer.training import train

    runs_dir = Path(runs_dir)
    out: dict = {"heads": {}, "overrides": list(overrides)}
    for head in heads:
        cfg = get_config("synthetic-context", [*overrides, f"model.head={head}"])
        run_dir = runs_dir / head
        summary_path = run_dir / "metrics.json"
        if not (run_dir / "final").is_dir():
            train(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists(),
                  progress=progress)  # fmt: skip
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        model = load_model(run_dir / "final")
        size = cfg.synthetic.size
        metrics = held_out_metrics(model, size=size, n_images=n_eval, progress=progress)
        row = {
            "mIoU": metrics["mIoU"],
            "context_mIoU": metrics["context_mIoU"],
            "IoU": dict(zip(SYNTHETIC_INFO.class_names, metrics["IoU"], strict=True)),
            "iters": cfg.iters,
            "sec_per_iter_in_run": summary.get("sec_per_iter"),
            "params": sum(p.numel() for p in model.parameters()),
            "run_dir": str(run_dir),
        }
        if registry.get(head).maps:  # heads without attention maps have none to analyse
            row["cue_attention"] = cue_attention_ratio(model, size=size)
        out["heads"][head] = row
        out["config"] = cfg.to_dict()
    # Training runs may have shared the machine differently: time one step of each head afresh.
    for head in heads:
        spec = {"overrides": [*overrides, f"model.head={head}"]}
        out["heads"][head]["train_step"] = run_worker("train-step", spec)
    out["held_out"] = {"seed": HELD_OUT_SEED, "images": n_eval}
    out["environment"] = {
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return out


def format_results(results: dict) -> str:
    """A Markdown table of :func:`run_experiment`'s results."""
    lines = [
        "| head | mIoU | context mIoU | s per train step | step peak memory (MB) | cue attention "
        "(median x, red / blue context) |",
        "|---|---|---|---|---|---|",
    ]
    for head, r in results["heads"].items():
        mem = r.get("train_step", {}).get("peak_memory_bytes")
        ms = r.get("train_step", {}).get("ms_per_step")
        by_class = r.get("cue_attention", {}).get("by_class", {})
        names = (SYNTHETIC_INFO.class_names[c] for c in SYNTHETIC_CONTEXT_CLASSES)
        cue = " / ".join(f"{by_class[n]['median']:.1f}" if n in by_class else "-" for n in names)
        lines.append(
            f"| {head} | {r['mIoU']:.3f} | {r['context_mIoU']:.3f} | "
            f"{'-' if ms is None else f'{ms / 1000:.2f}'} | "
            f"{'-' if mem is None else f'{mem / 2**20:.0f}'} | "
            f"{cue if by_class else '-'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "isa-explorer experiment context") -> int:
    """CLI: train/reuse the three heads, score them, write JSON and a Markdown table."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", default="runs/context", help="parent of the head runs")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every head, e.g. iters=200")  # fmt: skip
    parser.add_argument("--eval-images", type=int, default=128)
    parser.add_argument("--out", default="results/context_experiment.json")
    args = parser.parse_args(argv)
    results = run_experiment(args.runs_dir, args.heads, args.set, args.eval_images)
    results["command"] = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = format_results(results)
    env = results["environment"]
    out.with_suffix(".md").write_text(
        f"`{results['command']}` ({env['date']}, torch {env['torch']}, {env['device']}, "
        f"{env['threads']} threads; held-out seed {HELD_OUT_SEED}, "
        f"{results['held_out']['images']} scenes; train steps timed afresh per head, batch "
        f"{results['config']['batch_size']})\n\n{table}\n"
    )
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
