#!/usr/bin/env python
"""Where a training step of the ISA head spends its time and memory, and what each saving buys.

Runs the published head (2048 -> 512 / 256 -> 19 classes, batch 1) in train mode, forward +
mean-square loss + backward, in one process on 2 threads:

1. ``torch.profiler`` (``profile_memory=True``) of one step of the fused and the explicit path
   (the relation blocks selectively checkpointed, as shipped) and of the fused path with the
   blocks fully checkpointed: the operators by self CPU time, and the memory kept for
   backward, by what keeps it;
2. an ablation of the savings, each one undone in turn (the former code, patched back in;
   selective checkpointing of the relation blocks switched off, or replaced by full
   checkpointing): what backward keeps (MiB, counted tensor by tensor by
   ``tests/memory_probe.py``, selective checkpointing's cache included: exact) and the step
   time (median of ``--steps`` steps, the variants interleaved so machine noise hits all
   alike).

Usage:
    python benchmarks/head_training_profile.py --size 64x128 --out results/head_profile_64x128.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from isa_explorer import heads
from isa_explorer.heads.grid import GroupGrid
from isa_explorer.heads.protocol import HeadConfig
from isa_explorer.models.layers import ConvBNReLU, MaskReLU

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from memory_probe import kept_for_backward as probe  # noqa: E402

MiB = 2**20


def build(impl: str, checkpoint: bool = False) -> heads.Head:
    """The published ISA head in train mode; ``checkpoint``: full checkpointing of the blocks
    (else selective, the default)."""
    torch.manual_seed(0)
    head = heads.get("isa").build(2048, 19, HeadConfig(512, 256, attn_impl=impl)).train()
    head.set_full_checkpoint(checkpoint)
    return head


def step(head: nn.Module, x: torch.Tensor) -> None:
    head(x).float().square().mean().backward()
    head.zero_grad(set_to_none=True)


def kept_for_backward(head: nn.Module, x: torch.Tensor) -> tuple[float, dict[str, float]]:
    """MiB autograd keeps after a forward, in all and by the operation that keeps it."""
    by = probe(head, x)
    top = sorted(by.items(), key=lambda kv: -kv[1])[:12]
    return sum(by.values()) / MiB, {k: v / MiB for k, v in top}


# -- the savings, each undone by patching the former code back in -----------------------------


def _relu_on_a_view(self: ConvBNReLU, x: torch.Tensor) -> torch.Tensor:
    y = self.conv(x)
    if y.dim() == 3:
        b, n, c = y.shape
        return self.act(self.bn(y.reshape(b * n, c, 1, 1)).view(b, n, c))
    return self.act(self.bn(y))


def _reshape_tokens(self, x: torch.Tensor, *shape: int) -> torch.Tensor:
    return x.reshape(*shape)


@contextlib.contextmanager
def undone(change: str, head: nn.Module):
    """The head with one saving undone (``change``), restored afterwards."""
    mp = []
    try:
        if change == "ReLU in place on a view (CopySlices in backward)":
            mp.append(partial(setattr, ConvBNReLU, "forward", ConvBNReLU.forward))
            ConvBNReLU.forward = _relu_on_a_view
        elif change == "swapped tokens as a strided view (each projection copies)":
            mp.append(partial(setattr, GroupGrid, "_tokens", GroupGrid._tokens))
            GroupGrid._tokens = _reshape_tokens
        elif change == "ReLU keeps its output, not a mask":
            for m in head.modules():
                if isinstance(m, ConvBNReLU) and isinstance(m.act, MaskReLU):
                    mp.append(partial(setattr, m, "act", m.act))
                    m.act = nn.ReLU(inplace=True)
        elif change == "no selective checkpointing (plain blocks)":
            mp.append(partial(setattr, head, "selective_checkpoint", head.selective_checkpoint))
            head.selective_checkpoint = False
        elif change == "full checkpointing instead of selective":
            mp.append(partial(head.set_full_checkpoint, False))  # built without it
            head.set_full_checkpoint(True)
        elif change != "none (as shipped)":
            raise ValueError(change)
        yield
    finally:
        for restore in reversed(mp):
            restore()


CHANGES = (
    "none (as shipped)",
    "ReLU in place on a view (CopySlices in backward)",
    "swapped tokens as a strided view (each projection copies)",
    "ReLU keeps its output, not a mask",
    "no selective checkpointing (plain blocks)",
    "full checkpointing instead of selective",
)


def ablation(impl: str, x: torch.Tensor, steps: int) -> list[dict]:
    head = build(impl)
    rows = {c: {"undone": c, "impl": impl, "times_s": []} for c in CHANGES}
    for c in CHANGES:
        with undone(c, head):
            rows[c]["kept_mib"], _ = kept_for_backward(head, x)
            step(head, x)  # warm-up
    for _ in range(steps):  # interleaved
        for c in CHANGES:
            with undone(c, head):
                t0 = time.perf_counter()
                step(head, x)
                rows[c]["times_s"].append(time.perf_counter() - t0)
    out = []
    for r in rows.values():
        r["median_s"] = round(statistics.median(r["times_s"]), 3)
        r["kept_mib"] = round(r["kept_mib"], 1)
        out.append(r)
    return out


def profile(impl: str, x: torch.Tensor, checkpoint: bool = False) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    head = build(impl, checkpoint)
    step(head, x)
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(head, x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [
        {"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1), "calls": e.count}
        for e in events[:12]
    ]
    kept, by = kept_for_backward(head, x)
    return {
        "impl": impl + ("-checkpoint" if checkpoint else ""),
        "self_cpu_ms": round(total / 1000, 1),
        "top_ops": ops,
        "kept_mib": round(kept, 1),
        "kept_by": {k: round(v, 1) for k, v in by.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="64x128", help="feature map HxW")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--out", help="JSON report")
    a = ap.parse_args()
    torch.set_num_threads(2)
    h, w = map(int, a.size.split("x"))
    x = torch.randn(1, 2048, h, w, generator=torch.Generator().manual_seed(0))
    report = {
        "size": [h, w],
        "torch": torch.__version__,
        "threads": 2,
        "command": "python benchmarks/head_training_profile.py "
        + " ".join(f"--{k} {v}" for k, v in vars(a).items() if v is not None),
        "profiles": [profile("fused", x), profile("explicit", x), profile("fused", x, True)],
    }
    for p in report["profiles"]:
        print(f"\n{p['impl']}: {p['self_cpu_ms']:.0f} ms self CPU, keeps {p['kept_mib']:.0f} MiB")
        for o in p["top_ops"][:8]:
            print(f"  {o['self_ms']:9.1f} ms {o['calls']:4d}x {o['op']}")
        print("  kept by:", p["kept_by"])
    report["ablation"] = ablation("fused", x, a.steps) + ablation("explicit", x, a.steps)
    print("\nundone                                                     impl      kept MiB  step s")
    for r in report["ablation"]:
        print(f"{r['undone']:58s} {r['impl']:9s} {r['kept_mib']:8.1f} {r['median_s']:7.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
