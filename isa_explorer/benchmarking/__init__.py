"""Measurement helpers shared by :mod:`isa_explorer.bench_head` and :mod:`isa_explorer.benchmark`."""

from isa_explorer.benchmarking.flops import register_sdpa_formulas
from isa_explorer.benchmarking.measure import (
    PeakMemory,
    available_memory,
    run_worker,
    system_info,
    time_runs,
)

__all__ = [
    "PeakMemory",
    "available_memory",
    "register_sdpa_formulas",
    "run_worker",
    "system_info",
    "time_runs",
]

# FlopCounterMode counts the CPU flash-attention kernel too (see benchmarking/flops.py).
register_sdpa_formulas()
