#!/usr/bin/env python
"""Where a head's step goes, ours beside mmsegmentation's: the profile of each peer-target miss.

For a head, a mode and a feature size (``--cases nl:train:64x128,...``), each kind of
``peer_bench.py`` (``mmseg``, ours ``fused`` / ``explicit`` / ``ours``) runs in a fresh process
with 2 threads, one warm-up step, then ``--steps`` steps under ``torch.profiler``. Reported per
kind:

- **time by operator family** (self CPU time per step, :data:`FAMILIES`): convolutions, batch
  norm, the attention products (``bmm``/``mm``/SDPA), softmax, element-wise, copies and layout,
  the rest; and the top operators;
- **memory**: the head's parameters (its gradients are as large), in training what autograd
  keeps for backward (``tests/memory_probe.py``: tensor by tensor, by the node that keeps it),
  and the largest tensors the forward makes (operator and shape).

Same settings, same builds as the peer run (``peer_bench.build``); the peer venv
(``README.md`` beside this file). Writes ``--out`` (JSON) and the markdown beside it.

Usage:
    python benchmarks/peer/peer_profile.py --cases cc:train:64x128,gc:infer:128x256 \\
        --out results/peer_profile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import peer_bench as bench
from peer_settings import default_kinds

MiB = 2**20
#: Operator families by the aten name of their kernels (first match wins).
FAMILIES = (
    ("convolution", r"conv"),
    ("batch norm", r"batch_norm"),
    ("attention products", r"::(bmm|mm|addmm|baddbmm|matmul|einsum|_scaled_dot_product)"),
    ("softmax", r"softmax"),
    (
        "copies and layout",
        r"::(copy_|clone|contiguous|cat|_to_copy|to|fill_|zero_|zeros|empty"
        r"|stack|index|narrow_copy|col2im|im2col|_unsafe_view|as_strided)",
    ),  # fmt: skip
    (
        "element-wise",
        r"::(add|mul|div|sub|relu|threshold|sigmoid|mean|sum|pow|square|max|"
        r"exp|sqrt|norm|linalg|neg|clamp|where|dropout|native_dropout|bernoulli|rsub|expand)",
    ),  # fmt: skip
)


def family(name: str) -> str:
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def profile_one(head_name: str, kind: str, mode: str, h: int, w: int, steps: int) -> dict:
    """One kind's profile in this process (see the module docstring)."""
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, os.path.join(bench.PROJECT, "tests"))
    from memory_probe import kept_for_backward

    torch.set_num_threads(2)
    head, train_call, infer_call = bench.build(kind, head_name)
    head.train(mode == "train")
    x = torch.randn(1, 2048, h, w, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        if mode == "train":
            sum(y.float().square().mean() for y in train_call(head, x)).backward()
            head.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                infer_call(head, x)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps
    fams: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1000 / steps
        fams[family(e.key)] = fams.get(family(e.key), 0.0) + ms
        ops.append((e.key, ms))
    ops.sort(key=lambda kv: -kv[1])
    res = dict(
        head=head_name,
        kind=kind,
        mode=mode,
        h=h,
        w=w,
        steps=steps,
        step_ms=round(1000 * wall, 1),
        families_ms={k: round(v, 1) for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
        top_ops_ms=[(k, round(v, 1)) for k, v in ops[:8]],
        params_mib=round(sum(p.numel() * p.element_size() for p in head.parameters()) / MiB, 1),
        largest_outputs=_largest_outputs(lambda: infer_call(head, x), mode == "train"),
    )
    if mode == "train":

        class Outputs(nn.Module):  # the training call as a module, for the probe
            def __init__(self) -> None:
                super().__init__()
                self.head = head

            def forward(self, x):
                return train_call(self.head, x)

        by = kept_for_backward(Outputs(), x)
        res["kept_mib"] = round(sum(by.values()) / MiB, 1)
        res["kept_top_mib"] = [
            (k, round(v / MiB, 1)) for k, v in sorted(by.items(), key=lambda kv: -kv[1])[:6]
        ]
    print("RESULT " + json.dumps(res), flush=True)
    return res


def _largest_outputs(forward, train: bool, top: int = 6) -> list:
    """The largest tensors a forward makes: ``(operator, shape, MiB)``; views and in-place
    results are their input's storage, not new tensors, and are left out."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    seen: dict[int, tuple[str, list[int], float]] = {}

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = {
                t.untyped_storage().data_ptr()
                for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)
            }
            for t in tree_leaves(out):  # views and in-place results share an input's storage
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in ins:
                    st = t.untyped_storage()
                    entry = (func.overloadpacket.__name__, list(t.shape), st.nbytes() / MiB)
                    seen.setdefault(st.data_ptr(), entry)
            return out

    with torch.set_grad_enabled(train), Sizes():
        forward()
    big = sorted(seen.values(), key=lambda e: -e[2])[:top]
    return [(op, shape, round(mib, 1)) for op, shape, mib in big]


def run_kind(head: str, kind: str, mode: str, h: int, w: int, steps: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--one", head, kind, mode, str(h), str(w), str(steps)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=bench.PROJECT)
    except subprocess.TimeoutExpired:
        return dict(head=head, kind=kind, mode=mode, h=h, w=w, skipped=f"over {timeout:.0f} s")
    line = [s for s in p.stdout.splitlines() if s.startswith("RESULT ")]
    if line:
        return json.loads(line[0][7:])
    err = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(head=head, kind=kind, mode=mode, h=h, w=w, skipped=f"failed: {err[-300:]}")


def markdown(doc: dict) -> str:
    """One section per case: time by family for every kind side by side, then memory."""
    out = ["# Where each head's step goes, ours beside mmseg's (CPU profiles)", ""]
    out += [f"{doc['date']}, torch {doc['torch']}. Commands (each resumed the last):", ""]
    out += [f"- `{c}`" for c in doc.get("runs", [doc["command"]])] + [""]
    for case, rows in doc["cases"].items():
        ok = [r for r in rows if "skipped" not in r]
        out += [f"## {case}", ""]
        out += [f"- {r['kind']}: {r['skipped']}" for r in rows if "skipped" in r]
        if not ok:
            continue
        fams = list(dict.fromkeys(f for r in ok for f in r["families_ms"]))
        out.append("| ms per step | " + " | ".join(r["kind"] for r in ok) + " |")
        out.append("|---|" + "---:|" * len(ok))
        out.append("| wall | " + " | ".join(f"{r['step_ms']:.0f}" for r in ok) + " |")
        for f in fams:
            cells = [f"{r['families_ms'].get(f, 0.0):.0f}" for r in ok]
            out.append(f"| {f} | " + " | ".join(cells) + " |")
        out.append("| parameters MiB | " + " | ".join(f"{r['params_mib']:.0f}" for r in ok) + " |")
        if all("kept_mib" in r for r in ok):
            out.append("| kept for backward MiB | " + " | ".join(f"{r['kept_mib']:.0f}" for r in ok) + " |")  # fmt: skip
        out.append("")
        for r in ok:
            top = ", ".join(f"{k} {v:.0f}" for k, v in r["top_ops_ms"][:5])
            big = ", ".join(
                f"{op} {shape} {mib:.0f}" for op, shape, mib in r["largest_outputs"][:4]
            )
            out.append(f"- {r['kind']}: top operators (ms) {top}; largest tensors (MiB) {big}")
            if "kept_top_mib" in r:
                kept = ", ".join(f"{k} {v:.0f}" for k, v in r["kept_top_mib"][:5])
                out.append(f"  kept for backward by holder (MiB): {kept}")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=6, metavar=("HEAD", "KIND", "MODE", "H", "W", "STEPS"))
    ap.add_argument("--cases", help="HEAD:MODE:HxW,... (kinds: mmseg and ours, by head)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="results/peer_profile_cpu.json")
    a = ap.parse_args()
    if a.one:
        head, kind, mode, h, w, steps = a.one
        profile_one(head, kind, mode, int(h), int(w), int(steps))
        return 0
    import torch

    doc = dict(
        command=" ".join(["benchmarks/peer/peer_profile.py", *sys.argv[1:]]),
        date=time.strftime("%Y-%m-%d"),
        torch=torch.__version__,
        cases={},
    )
    doc["runs"] = [doc["command"]]
    if os.path.exists(a.out):  # resume: keep the cases profiled before, and their commands
        with open(a.out) as f:
            old = json.load(f)
        doc["cases"] = old["cases"]
        doc["runs"] = [*old.get("runs", [old["command"]]), doc["command"]]
    for case in a.cases.split(","):
        if case in doc["cases"]:
            continue
        head, mode, size = case.split(":")
        h, w = map(int, size.split("x"))
        rows = [
            run_kind(head, k, mode, h, w, a.steps, a.timeout) for k in default_kinds(head, mode)
        ]
        doc["cases"][case] = rows
        for r in rows:
            print(case, r["kind"], r.get("step_ms", r.get("skipped")), flush=True)
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
