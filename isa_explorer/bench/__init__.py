"""The package's benchmark: ``isa-explorer bench attention``, the attention modules by resolution.

:mod:`~isa_explorer.bench.runner` runs the cases of :mod:`isa_explorer.costs.cases`, each in a
fresh process through one worker protocol (:mod:`~isa_explorer.bench.worker`); its command line
is :mod:`~isa_explorer.bench.attention_cli`. The developer benchmarks (the whole decoder, click
latency, synthetic data, export, the GPU check) are scripts of the repository:
``python benchmarks/NAME.py`` (``docs/benchmarks.md``).
"""
