"""Every benchmark of ISA Explorer, run as ``isa-explorer bench KIND`` (:mod:`~isa_explorer.bench.cli`).

* :mod:`~isa_explorer.bench.attention` -- the attention modules, ISA vs dense, by resolution;
* :mod:`~isa_explorer.bench.decoder` -- the whole decoder, fused vs explicit vs dense, and the
  attention probe;
* :mod:`~isa_explorer.bench.click` -- the app's server-side click latency;
* :mod:`~isa_explorer.bench.synthetic` -- the synthetic data generator's speed;
* :mod:`~isa_explorer.bench.export` -- exported models (ONNX, ``.pt2``) against eager PyTorch.

They share :mod:`~isa_explorer.bench.measure` (timing, peak memory, system info, sizes) and
one worker protocol for fresh processes (:mod:`~isa_explorer.bench.worker`); the FLOP counts
use torch's counter with the formulas of :mod:`~isa_explorer.bench.flops`. Importing this
package imports nothing else (``isa-explorer bench --help`` needs no torch).

The GPU check (training, inference, the heads, the token budget, ``torch.compile`` graph breaks
and SyncBatchNorm on CUDA) is a script of the repository, not of the package:
``python benchmarks/gpu/run.py`` (``docs/gpu_check.md``); it measures through these modules.
"""
