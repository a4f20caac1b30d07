"""The package's benchmarks: ``isa-explorer bench attention`` (the attention modules by
resolution) and ``isa-explorer bench decoder`` (every head's whole decoder by resolution).

:mod:`~isa_explorer.bench.runner` runs the cases of :mod:`isa_explorer.costs.cases`, each in a
fresh process through one worker protocol (:mod:`~isa_explorer.bench.worker`); its command line
is :mod:`~isa_explorer.bench.attention_cli`. The decoder benchmark is
:mod:`~isa_explorer.bench.decoder` (its cases :mod:`~isa_explorer.bench.decoder_cases`, its
figure :mod:`~isa_explorer.bench.decoder_plot`), each case in a fresh process through
:func:`~isa_explorer.bench.worker.run_fresh`. The other developer benchmarks (click latency,
synthetic data, export, the GPU check) are scripts of the repository:
``python benchmarks/NAME.py`` (``docs/benchmarks.md``).
"""
