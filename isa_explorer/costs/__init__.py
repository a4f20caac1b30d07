"""What attention costs, by formula and by measurement: what the app and notebooks read.

:mod:`~isa_explorer.costs.analytic` (every registered head's analytic cost and attention
step), :mod:`~isa_explorer.costs.measure` (timing, peak memory, system info),
:mod:`~isa_explorer.costs.flops` (counted FLOPs), :mod:`~isa_explorer.costs.cases` (one case
measured in this process, the committed results) and :mod:`~isa_explorer.costs.plot`. The
benchmark that runs cases in fresh processes is :mod:`isa_explorer.bench`.
"""
