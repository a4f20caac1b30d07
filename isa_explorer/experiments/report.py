"""The context experiment's Markdown report: tables per head, per run and of the reference runs,
and what the numbers say (written from them, whatever they are)."""

from __future__ import annotations

from isa_explorer import heads as registry
from isa_explorer.data.synthetic import SYNTHETIC_CONTEXT_CLASSES, SYNTHETIC_INFO
from isa_explorer.experiments.scores import HELD_OUT_SEED

#: How far above FCN's best seed a run's context mIoU must be to count as using the cue: FCN's
#: seeds differ by ~0.002, a head that finds the cue on some scenes only gains ~0.1 or more.
USES_CUE_MARGIN = 0.1
_CONTEXT_NAMES = [SYNTHETIC_INFO.class_names[c] for c in SYNTHETIC_CONTEXT_CLASSES]


def cue_summary(row: dict) -> str:
    """Median cue attention of red / blue context queries, ``-`` for heads without a map."""
    by_class = row.get("cue_attention", {}).get("by_class", {})
    if not by_class:
        return "-"
    return " / ".join(
        f"{by_class[n]['median']:.1f}" if n in by_class else "-" for n in _CONTEXT_NAMES
    )


def _step(summary: dict) -> tuple[str, str]:
    step = summary.get("train_step", {})
    if step.get("status") != "ok":
        return "-", "-"
    return f"{step['ms_per_step'] / 1000:.2f}", f"{step['peak_memory_bytes'] / 2**20:.0f}"


def _spread(metric: dict) -> str:
    return f"{metric['mean']:.3f} ({metric['min']:.3f}-{metric['max']:.3f})"


def _best_row(results: dict, summary: dict) -> dict:
    return next(
        r
        for r in results["runs"]
        if (r["head"], r["kind"], r["seed"])
        == (summary["head"], summary["kind"], summary["best_seed"])
    )


def _even(results: dict, head: str) -> bool:
    """Whether every head-only run of ``head`` has near-even cue attention for both classes."""
    rows = [r for r in results["runs"] if r["kind"] == "head-only" and r["head"] == head]
    medians = [
        c["median"] for r in rows for c in r.get("cue_attention", {}).get("by_class", {}).values()
    ]
    return bool(medians) and all(0.8 <= m <= 1.25 for m in medians)


def findings(results: dict) -> list[str]:
    """Sentences on what the head-only runs show, computed from the numbers."""
    heads = {k: v for k, v in results["heads"].items() if v["kind"] == "head-only"}
    if not heads:
        return []
    ranked = sorted(heads, key=lambda h: -heads[h]["context_mIoU"]["mean"])
    ctx = {h: heads[h]["context_mIoU"]["mean"] for h in ranked}
    out = [
        "By mean context mIoU over seeds: " + ", ".join(f"{h} {ctx[h]:.3f}" for h in ranked) + "."
    ]
    plain = [h for h in ranked if not registry.get(h).maps]  # heads without attention
    if plain:
        base = plain[0]
        bar = heads[base]["context_mIoU"]["max"] + USES_CUE_MARGIN
        rows = [r for r in results["runs"] if r["kind"] == "head-only"]
        won = {h: [r["seed"] for r in rows if r["head"] == h and r["context_mIoU"] >= bar]
               for h in ranked if h not in plain}  # fmt: skip
        every = [h for h, s in won.items() if len(s) == len(heads[h]["seeds"])]
        some = [
            f"{h} (seed {', '.join(map(str, s))})" for h, s in won.items() if s and h not in every
        ]
        out.append(
            f"Without attention ({base}) the context classes reach {ctx[base]:.3f}. At least "
            f"{USES_CUE_MARGIN} above its best seed ({bar:.3f}) on every seed: "
            f"{', '.join(every) or 'none'}; on some seeds only: {', '.join(some) or 'none'}; on "
            f"none: {', '.join(h for h, s in won.items() if not s) or 'none'}."
        )
    even = [h for h in ranked if _even(results, h)]
    if even:
        out.append(
            f"The maps of {', '.join(even)} put on the cue about what an even spread would "
            "(cue attention 0.8-1.25x for both context classes on every seed): they did not "
            "learn to look for it in this budget."
        )
    spread = {h: heads[h]["context_mIoU"]["max"] - heads[h]["context_mIoU"]["min"] for h in ranked}
    wide = max(spread, key=spread.get)
    out.append(
        f"Seeds move context mIoU by up to {spread[wide]:.3f} ({wide}); differences between heads "
        "smaller than that are not shown by two seeds."
    )
    steps = {h: heads[h]["train_step"]["ms_per_step"] for h in ranked
             if heads[h]["train_step"].get("status") == "ok"}  # fmt: skip
    if steps:
        fast, slow = min(steps, key=steps.get), max(steps, key=steps.get)
        encoder = next((v for v in results["heads"].values() if v["kind"] == "encoder"), {})
        whole = encoder.get("train_step", {})
        out.append(
            f"A head-only training step (frozen encoder) takes {steps[fast] / 1000:.2f} s ({fast}) "
            f"to {steps[slow] / 1000:.2f} s ({slow})"
            + (
                f"; the encoder's own end-to-end {encoder['head']} step "
                f"{whole['ms_per_step'] / 1000:.2f} s."
                if whole.get("status") == "ok"
                else "."
            )
        )
    for ref in results["heads"].values():  # a reference run of a head compared above
        if ref["kind"] == "end-to-end" and ref["head"] in heads:
            out.append(
                f"{ref['head']} trained end to end (the encoder learning with it) reaches context "
                f"mIoU {ref['context_mIoU']['mean']:.3f}; on the shared frozen encoder "
                f"{heads[ref['head']]['context_mIoU']['mean']:.3f}."
            )
    return out


def format_results(results: dict) -> str:
    """The Markdown report of :func:`~isa_explorer.experiments.context.run_experiment`."""
    env, cfg = results["environment"], results["config"]
    held = results.get("held_out", {"seed": HELD_OUT_SEED, "images": "?"})
    lines = [
        "# What each head buys: the controlled long-range experiment",
        "",
        f"`{results.get('command', 'isa-explorer experiment context')}` ({env['date']}, torch "
        f"{env['torch']}, {env['device']} {env.get('cpu_capability', '')}, {env['threads']} "
        f"threads). Held-out scenes: seed {held['seed']}, {held['images']} scenes, used by no "
        "training run and not for choosing a seed (the best seed has the best validation mIoU).",
        "",
        f"One encoder ({cfg['model']['encoder_name']}, output stride "
        f"{cfg['model']['encoder_output_stride']}) trained end to end with the "
        f"{results['encoder']['head']} head (`{results['encoder']['run_dir']}`), then frozen; "
        f"each head trained alone on it with the same recipe ({cfg['iters']} iterations, batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}, {cfg['model']['decoder_channels']} head "
        "channels). Train steps are timed afresh per head, in a fresh process each.",
        "",
        "## Each head on the shared encoder (mean and range over seeds)",
        "",
        "| head | mIoU | context mIoU | best seed | s per train step | step peak memory (MB) "
        "| cue attention, best seed (red / blue context) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in results["heads"].items():
        if s["kind"] == "head-only":
            t, m = _step(s)
            lines.append(
                f"| {key} | {_spread(s['mIoU'])} | {_spread(s['context_mIoU'])} | "
                f"{s['best_seed']} | {t} | {m} | {cue_summary(_best_row(results, s))} |"
            )
    lines += [
        "",
        "## Every run",
        "",
        "| kind | head | seed | val mIoU | held-out mIoU | context mIoU | cue attention (red / "
        "blue) | encoder unchanged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        same = {True: "yes", False: "**no**"}.get(r.get("encoder_unchanged"), "-")
        lines.append(
            f"| {r['kind']} | {r['head']} | {r['seed']} | {r['val_mIoU']:.3f} | {r['mIoU']:.3f} | "
            f"{r['context_mIoU']:.3f} | {cue_summary(r)} | {same} |"
        )
    refs = {k: s for k, s in results["heads"].items() if s["kind"] != "head-only"}
    if refs:
        lines += [
            "",
            "## Reference: end-to-end runs (the encoder trained with the head)",
            "",
            "The FCN run is the shared encoder's own. These are not the controlled comparison: "
            "each encoder learned with its head.",
            "",
            "| head | mIoU | context mIoU | s per train step | step peak memory (MB) | cue "
            "attention (red / blue) |",
            "|---|---|---|---|---|---|",
        ]
        for key, s in refs.items():
            t, m = _step(s)
            r = _best_row(results, s)
            lines.append(
                f"| {key} | {r['mIoU']:.3f} | {r['context_mIoU']:.3f} | {t} | {m} | {cue_summary(r)} |"
            )
    found = findings(results)
    if found:
        lines += ["", "## What it finds", "", *[f"- {f}" for f in found]]
    return "\n".join(lines) + "\n"
