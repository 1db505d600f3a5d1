"""The benchmark suite of the package (``make bench``, or ``.venv/bin/python -m benchmarks``).

Four sections, each a module with a ``section(quick)`` function that returns rows of the one
table (:mod:`benchmarks.table`): ``ratios`` (:mod:`benchmarks.attribution_speed`),
``throughput`` (:mod:`benchmarks.throughput`), ``streaming`` (:mod:`benchmarks.streaming`) and
``pixel flipping`` (:mod:`benchmarks.selectivity_speed`). :mod:`benchmarks.run` is the command
line. Ratios, not absolute times, are what a change is judged by: they compare across machines.
"""
