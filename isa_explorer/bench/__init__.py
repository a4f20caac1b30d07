"""The package's benchmark: the attention modules, ISA vs dense, by resolution.

``isa-explorer bench attention`` (:mod:`~isa_explorer.bench.attention`; the app's efficiency
tab shows it), with :mod:`~isa_explorer.bench.measure` (timing, peak memory, system info), one
worker protocol for fresh processes (:mod:`~isa_explorer.bench.worker`) and the FLOP formulas
of :mod:`~isa_explorer.bench.flops`. Importing this package imports nothing else. The developer
benchmarks (the whole decoder, click latency, synthetic data, export, the GPU check) are
scripts of the repository: ``python benchmarks/NAME.py`` (``docs/benchmarks.md``).
"""
