"""The head benchmarks and the token-budget sweep of the GPU check.

* ``heads`` -- the attention-module benchmark (:func:`isa_explorer.costs.cases.measure_case`:
  the context step alone, ``isa-fused`` / ``isa-explicit`` / ``dense-fused``) and the whole
  decoder (``measure_decoder`` of :mod:`isa_explorer.bench.decoder`, paths ``isa-fused``,
  ``isa-explicit``, ``dense-fused``: the fused head's forward, the plain head's training step,
  also with the relation blocks checkpointed, ``isa-fused-checkpoint``), at each feature
  size of the plan, in this process (on CUDA the peak is ``max_memory_allocated`` after a
  reset, so no fresh process is needed);
* ``token_budget`` -- the streamed inference path
  (:func:`~isa_explorer.heads.isa.isa_context`) of the fused decoder
  at one feature map with each budget of the plan, fp32 and bf16.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from isa_explorer.bench.decoder import build_decoder, measure_decoder
from isa_explorer.costs.cases import measure_case
from isa_explorer.costs.measure import MiB, PeakMemory, median_ms, time_runs
from isa_explorer.heads.isa_stream import TOKEN_BUDGET, TOKEN_BUDGET_ACCELERATOR
from plan import Case, Plan, autocast

#: The modules of the attention benchmark (dense: through SDPA; its N x N affinity would not fit).
ATTENTION_MODULES = ("isa-fused", "isa-explicit", "dense-fused")
PASSES = ("forward", "forward+backward")
#: Decoder paths per pass (``-checkpoint``: training only, the relation blocks checkpointed).
DECODER_PATHS = {
    "forward": ("isa-fused", "isa-explicit", "dense-fused"),
    "forward+backward": ("isa-fused", "isa-explicit", "dense-fused", "isa-fused-checkpoint"),
}


def _runs(plan: Plan, seconds: float = 0.0) -> tuple[int, int]:
    """Timed and warm-up calls of a head case: the plan's in a smoke run; else 3 and 1, or 1
    and 1 where one call is expected to take over ``0.5`` s (dense attention over a 256x512
    map, whose long calls vary little)."""
    if plan.smoke:
        return plan.runs, plan.warmup
    return (1, 1) if seconds > 0.5 else (3, 1)


def head_cases(plan: Plan, ctx: Any = None) -> list[Case]:
    """Attention modules and whole decoders, forward and forward+backward, at every size."""
    cases = []
    for size in plan.features:
        tag = f"{size[0]}x{size[1]}"
        # Dense attention grows as N^2: at 128x256 fp32 about 1.6 TFLOP a forward, 0.05 s on
        # an H200 (0.2 s with backward), 16x that at 256x512; ISA takes milliseconds.
        dense = (size[0] * size[1] / (128 * 256)) ** 2
        runs_of = [("attention", m, p) for m in ATTENTION_MODULES for p in PASSES]
        runs_of += [("decoder", d, p) for p in PASSES for d in DECODER_PATHS[p]]
        for bench, name, p in runs_of:
            call = dense * (0.05 if p == "forward" else 0.2) if "dense" in name else 0.05
            runs, warmup = _runs(plan, call)
            measure = _attention_case if bench == "attention" else _decoder_case
            run = partial(measure, plan, name, size, p, runs, warmup)
            estimate = 0.5 if plan.smoke else 1 + call * (runs + warmup)
            cases.append(Case("heads", f"{bench} {name} {p} {tag}", run, estimate))
    return cases


def _attention_case(
    plan: Plan, module: str, size: tuple[int, int], p: str, runs: int, warmup: int
) -> dict[str, Any]:
    r = measure_case(
        module, size, p, runs, warmup, plan.device, plan.channels, plan.isa_channels, 8
    )
    r.pop("status", None)
    return {"bench": "attention", "module": module, "pass": p, "size": list(size), **r}


def _decoder_case(
    plan: Plan, path: str, size: tuple[int, int], p: str, runs: int, warmup: int
) -> dict[str, Any]:
    mode = "infer" if p == "forward" else "train"
    r = measure_decoder(path, size, runs, warmup, plan.device, plan.head, mode)
    for key in ("status", "path", "head", "impl", "checkpoint", "mode", "size", "positions"):
        r.pop(key, None)
    return {"bench": "decoder", "module": path, "pass": p, "size": list(size), **r}


def budget_cases(plan: Plan, ctx: Any = None) -> list[Case]:
    """The fused decoder at ``plan.budget_feature`` with each token budget."""
    h, w = plan.budget_feature
    cases = []
    for dtype in ("fp32", "bf16"):
        for budget in plan.budgets:
            run = partial(_budget_case, plan, dtype, budget)
            name = f"token budget {budget} {dtype}"
            cases.append(Case("token_budget", name, run, 0.5 if plan.smoke else 3))
    return cases


def _budget_case(plan: Plan, dtype: str, budget: int) -> dict[str, Any]:
    runs, warmup = _runs(plan)
    device = torch.device(plan.device)
    torch.manual_seed(0)
    decoder = build_decoder("isa-fused", plan.head).to(device)
    decoder.token_budget = budget
    cin = decoder.in_conv.conv.in_channels
    x = torch.randn(1, cin, *plan.budget_feature, device=device)  # (1, Cin, h, w)

    def call() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, dtype):
            return decoder(x)

    mem = PeakMemory(device).start()
    times = time_runs(call, runs, warmup, device)
    h, w = plan.budget_feature
    return {
        "dtype": dtype,
        "token_budget": budget,
        "size": [h, w],
        "positions": h * w,
        "median_ms": round(median_ms(times), 2),
        "peak_mib": round(mem.growth() / MiB, 1),
        "memory_method": mem.method,
        "default_budget": TOKEN_BUDGET_ACCELERATOR if device.type != "cpu" else TOKEN_BUDGET,
    }
