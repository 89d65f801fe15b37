"""
Benchmarks of resource-supervisor against its peers: ``python -m benchmarks``.

Every comparison runs its contenders side by side in one process, interleaved
over several rounds, and reports medians, minimums and per-round ratios (see
:mod:`benchmarks._harness`); the targets come from BASELINES.md. Benchmarks are not
tests: nothing here fails on timing.
"""
