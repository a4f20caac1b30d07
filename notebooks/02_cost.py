# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. What ISA saves: memory, FLOPs and time
#
# **What this notebook teaches.** Why interlaced sparse attention is affordable where dense
# attention is not, in formulas first and then in measurements:
#
# - the size of the affinities: `N^2` for dense attention, `N (N / P + P)` for ISA with groups
#   of `P` positions, and the group size that minimises it (`P = sqrt(N)`);
# - FLOPs of the whole attention step (affinities *and* the 1x1 projections), counted two ways:
#   by formula (`isa_explorer.costs.analytic.analytic_costs`) and by PyTorch's
#   `torch.utils.flop_counter` on the meta device (`count_flops`);
# - measured time and peak memory of the four paths -- ISA and dense, each with materialised
#   affinities (`explicit`) and through the fused `scaled_dot_product_attention` kernel
#   (`fused`) -- in a small live run and in the committed full run.
#
# The live run is small (two resolutions, forward only) and takes about a minute on a CPU.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from isa_explorer.bench.runner import run_benchmark
from isa_explorer.costs.analytic import analytic_costs, modules
from isa_explorer.costs.cases import COMMITTED_RESULTS, RESOLUTIONS, load_results
from isa_explorer.costs.flops import count_flops
from isa_explorer.costs.plot import plot_results
from isa_explorer.heads.isa import auto_group

C, CK = 512, 256  # the published head: 512 channels, 256 query/key channels
GiB = 2**30

# %% [markdown]
# ## 1. The affinity matrices
#
# A feature map of `h x w = N` positions. Dense attention compares every position with every
# other: an `N x N` affinity. ISA with groups of `P = Ph x Pw` positions (`down_factor`, 8 x 8
# in the paper) has two steps:
#
# - long range: `P` sequences of `N / P` positions (one per group offset) -> `P (N / P)^2`;
# - short range: `N / P` sequences of `P` positions (one per block) -> `(N / P) P^2`;
#
# in all `N^2 / P + N P = N (N / P + P)` entries. As a function of `P` this is smallest where
# `N / P^2 = 1`, i.e. **`P = sqrt(N)`**, and the minimum is `2 N^{3/2}`: the saving over dense
# attention grows like `sqrt(N) / 2`.
#
# For Cityscapes crops of 512 x 1024 an output-stride-8 encoder gives a 64 x 128 map,
# `N = 8192`:

# %%
h, w = 64, 128
N = h * w
print(f"N = {N}: dense affinity {N * N:,} entries = {N * N * 4 / GiB:.2f} GiB in float32")
for side in (2, 4, 8, 16, 32, 64):
    isa = analytic_costs(h, w, group=side, channels=C, isa_channels=CK)["isa-explicit"]
    print(
        f"  groups {side:2d} x {side:<2d} (P = {side * side:4d}): ISA "
        f"{isa['affinity_elements']:>12,} entries, {N * N / isa['affinity_elements']:6.1f}x fewer"
    )
best = auto_group(h, w)
optimum = 2 * N**1.5  # N (N / P + P) at P = sqrt(N), ignoring that P must tile the map
eight = analytic_costs(h, w, group=8, channels=C, isa_channels=CK)["isa-explicit"]
print(f"best square group for {h} x {w}: {best} x {best}; sqrt(N) = {math.sqrt(N):.1f} positions")
print(f"8 x 8 groups are within {eight['affinity_elements'] / optimum - 1:.0%} of 2 N^1.5")

# %% [markdown]
# The published 8 x 8 groups are exactly optimal for a 64 x 64 map (`N = 4096`), and for the
# 64 x 128 Cityscapes map they are the best square group and close to the unconstrained
# optimum. Padding matters when the map is not a multiple of the group: `analytic_costs` counts
# the padded positions, and `auto_group` picks the side that minimises the padded total.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
sides = np.arange(1, 65)
for fh, fw in ((32, 64), (64, 128), (128, 256)):
    n = fh * fw
    entries = [
        analytic_costs(fh, fw, group=int(s), channels=C, isa_channels=CK)["isa-explicit"][
            "affinity_elements"
        ]
        for s in sides
    ]
    (line,) = ax.plot(sides, entries, label=f"{fh} x {fw} (N = {n})")
    ax.axhline(n * n, color=line.get_color(), ls=":", lw=1)
    s_best = auto_group(fh, fw)
    ax.plot(s_best, entries[s_best - 1], "o", color=line.get_color())
ax.axvline(8, color="grey", lw=1)
ax.set_yscale("log")
ax.set_xlabel("group side s (P = s x s)")
ax.set_ylabel("affinity entries")
ax.set_title("ISA affinity size vs group side (dotted: dense; dots: optimum; grey: 8)")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. FLOPs: affinities and projections
#
# Each relation block also projects every position (queries and keys through two 1x1 layers,
# values, output): about `4 (C Ck + Ck^2) + 4 C^2` FLOPs per position, and ISA has two blocks.
# The affinity matmuls (`Q K^T` and `A V`) cost `2 (Ck + C)` FLOPs per entry. At small maps the
# projections dominate and ISA is *not* cheaper than dense; the quadratic term takes over as the
# map grows. The formulas are checked against PyTorch's own count of the operators that run
# (`FlopCounterMode` on the meta device: no memory, no compute, so even maps too large to run
# can be counted). The table holds every head with a cost formula: besides ISA and dense,
# mmseg's context heads (`nl`, `cc`, `da`, `gc`, `ema`), each with its own formula in its own
# file (`Head.cost`: NL and DA's position attention are `N^2` like dense, CC's criss-cross
# `N (h + w)` per pass, GC's one mask `N`, EMA's `N K` per EM stage).

# %%
print(f"{'feature':>9} {'module':>15} {'analytic GFLOP':>15} {'counted GFLOP':>14}")
for fh, fw in ((16, 32), (64, 128)):
    costs = analytic_costs(fh, fw, group=8, channels=C, isa_channels=CK)
    for module in modules():
        analytic = costs[module]["flops"]["forward"]
        counted = count_flops(module, (fh, fw), "forward", channels=C, isa_channels=CK, group=8)
        print(f"{fh:>4} x {fw:<3} {module:>15} {analytic / 1e9:15.2f} {counted / 1e9:14.2f}")

# %%
feature_sizes = [(r[0] // 8, r[1] // 8) for r in RESOLUTIONS]
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for module in ("isa-explicit", "dense-explicit"):
    costs = [analytic_costs(fh, fw, 8, C, CK)[module] for fh, fw in feature_sizes]
    n = [c["positions"] for c in costs]
    axes[0].loglog(n, [c["flops"]["forward"] for c in costs], "o-", label=module)
    axes[1].loglog(n, [c["affinity_bytes"] / GiB for c in costs], "o-", label=module)
for ax, title in zip(axes, ("forward FLOPs", "affinity memory (GiB)"), strict=True):
    ax.set_xlabel("feature positions N")
    ax.set_xticks(
        [fh * fw for fh, fw in feature_sizes],
        [f"{r[0]}x{r[1]}" for r in RESOLUTIONS],
        rotation=20,
    )
    ax.set_title(f"{title} at input resolutions (stride 8, groups 8 x 8)")
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. A small live measurement
#
# `run_benchmark` runs each case (module, pass, resolution) in a fresh subprocess, so that the
# peak resident memory of one case does not hide the next, and reports the median time and the
# peak memory growth beside the analytic prediction. Cases predicted not to fit are skipped with
# the reason. Here: the four ISA and dense paths at two small resolutions, forward only.

# %%
live = run_benchmark(
    resolutions=[(128, 256), (256, 512)],
    modules=["isa-explicit", "isa-fused", "dense-explicit", "dense-fused"],
    passes=["forward"],
    runs=2,
    warmup=1,
    max_seconds=30,
)
print(f"{'input':>9} {'module':>15} {'status':>8} {'ms':>8} {'peak MiB':>9} {'predicted MiB':>14}")
for r in live:
    res = f"{r['resolution'][0]}x{r['resolution'][1]}"
    ms, mib = r.get("median_ms", float("nan")), r.get("peak_mib", float("nan"))
    predicted = r["analytic"]["predicted_peak_mib"]
    print(f"{res:>9} {r['module']:>15} {r['status']:>8} {ms:8.1f} {mib:9.1f} {predicted:14.1f}")

fig, axes = plt.subplots(1, 2, figsize=(15, 4.6))
plot_results(live, axes)
plt.show()

# %% [markdown]
# At these sizes the dense affinity is still small (a 32 x 64 map: 4 M entries, 16 MiB), so ISA
# saves little or nothing: the 1x1 projections (twice, for two blocks) and the regrouping cost
# as much as the affinities. Timings on a shared CPU are also noisy. The committed run goes to
# 2048 x 4096 inputs (a 256 x 512 map, `N = 131,072`), where a dense affinity alone needs 64 GiB.
#
# ## 4. The committed results
#
# `COMMITTED_RESULTS` (package data) was written by the attention benchmark (its command and
# machine are stored with it): every resolution of `RESOLUTIONS`, every module of every head
# (the four ISA and dense paths, and the context heads'), forward and forward + backward.

# %%
report = load_results(COMMITTED_RESULTS) if COMMITTED_RESULTS.is_file() else None
if report is None:
    print(f"{COMMITTED_RESULTS.name} is not in this checkout; produce it with")
    print("  isa-explorer bench attention --out benchmark_cpu.json")
    report = {"system": {}, "results": []}
system = report["system"]
print("machine:", {k: v for k, v in system.items() if not isinstance(v, dict | list)})
if report["results"]:
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    plot_results(report, axes)
    plt.show()

ok = {
    (tuple(r["resolution"]), r["module"], r["pass"]): r
    for r in report["results"]
    if r["status"] == "ok"
}
for r in report["results"]:
    if r["status"] != "ok":
        res = f"{r['resolution'][0]}x{r['resolution'][1]}"
        print(f"{res:>9} {r['module']:>15} {r['pass']:>17}: {r['status']} ({r.get('reason', '')})")
print()
for (res, module, p), r in sorted(ok.items()):
    dense = ok.get((res, module.replace("isa", "dense"), p))
    if module.startswith("isa") and dense is not None:
        print(
            f"{res[0]}x{res[1]} {p:>17} {module.split('-')[1]:>8}: dense / ISA time "
            f"{dense['median_ms'] / r['median_ms']:5.1f}x, memory "
            f"{dense['peak_mib'] / max(r['peak_mib'], 0.1):5.1f}x"
        )

# %% [markdown]
# ### Try it: resolution, channels and block side
#
# The sliders set the input size (the feature map is 1/8 of it), the channels `C` and the ISA
# block side. The left panels redraw the analytic peak memory and FLOPs of every head (its
# explicit module) against `N` (the star is the chosen input), with the committed measurements
# as markers; the right one gives ISA's affinity size against the block side, and the optimum.

# %%
from IPython.display import display  # noqa: E402

from isa_explorer.explorer.widgets import CostView  # noqa: E402

cost = CostView(resolution=(512, 1024), channels=C, group=8, committed=report)
display(cost.widget())
display(cost.snapshot())

# %%
for res in ((512, 1024), (1024, 2048), (776, 1048)):
    now = cost.set(resolution=res)
    print(
        f"{res[0]}x{res[1]}: ISA {now['isa']['predicted_peak_bytes']['forward'] / 2**20:8.0f} MiB, "
        f"dense {now['dense']['predicted_peak_bytes']['forward'] / 2**20:8.0f} MiB; optimum block "
        f"{cost.optimum()}"
    )

# %% [markdown]
# Read the committed figure with the formulas in mind: the dense curves bend up to slope 2 on
# the log-log axes (`N^2`). With fixed 8 x 8 groups the ISA affinity is `N^2 / 64 + 64 N`:
# linear up to `N = 4096`, quadratic beyond, but 64 times smaller than dense, and the 1x1
# projections (linear in `N`) remain a large part of its cost. The fused kernel never
# materialises the affinity, so `dense-fused` avoids the `N^2` *memory* but not the `N^2`
# FLOPs: its time still grows quadratically.
#
# ## Exercises
#
# 1. Derive the optimum group for a non-square map and check it with `auto_group(h, w)` for
#    64 x 128 and 97 x 131 (padding included). How much does the optimum save over 8 x 8?
# 2. For which `N` do the forward FLOPs of dense and ISA (8 x 8 groups) cross? Use
#    `analytic_costs` and find the crossing by bisection.
# 3. Run `run_benchmark` with `passes=["forward+backward"]` at the same two resolutions. How much
#    more memory does training need than inference, and which path gains most?
# 4. Run the live benchmark with `group="auto"`. At which resolution does the automatic group
#    stop being 8?
# 5. Why does `count_flops` report more FLOPs for `isa-fused` than for `isa-explicit`? (Hint:
#    how are the 512-d values split for the fused kernel?)
