"""
Adaptive admission control: a concurrency limit that follows the measured latency.

Covers, one concept per module: :mod:`._limit` (the pure limit algorithm),
:mod:`._pressure` (the pure rule that lets memory pressure, CPU saturation and the
process lane's queue tighten the limit), :mod:`._cpu_stat` (the cgroup ``cpu.stat``
throttling reader) and :mod:`._limiter` (the asyncio limiter behind
``sup.admission``). Does not cover: HTTP (see
:mod:`resource_supervisor.integrations._admission_middleware`).
"""
