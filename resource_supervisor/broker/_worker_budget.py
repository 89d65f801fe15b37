"""
The worker budget: how ``max_total_workers`` splits between processes and threads.

Covers: :func:`split_worker_budget`, pure. Does not cover: resolving ``"auto"``
worker counts (the supervisor does that and passes ints) or building the lanes
with the counts (:mod:`._executors`).
"""

from __future__ import annotations

__all__ = ("split_worker_budget",)


def split_worker_budget(cpu: int, io: int, cap: int | None) -> tuple[int, int]:
    """
    Fit ``cpu`` worker processes and ``io`` lane threads under a total *cap*.

    Pure. Within the cap (or without one) the counts are returned unchanged. Over
    it, both are scaled down in proportion, keeping at least one of each (so a cap
    of 1 still gives one of each); the CPU share is rounded down and the I/O share
    takes the rest, so together they use the whole cap.

    Args:
        cpu: Worker processes wanted (at least 1).
        io: Lane threads wanted (at least 1).
        cap: ``max_total_workers``, or ``None`` for no cap.

    Returns:
        ``(cpu_workers, io_workers)``.

    Raises:
        ValueError: If *cpu*, *io* or *cap* is below 1.
    """
    if cpu < 1 or io < 1:
        raise ValueError(f"worker counts must be at least 1, got cpu={cpu} io={io}")
    if cap is None or cpu + io <= cap:
        return cpu, io
    if cap < 1:
        raise ValueError(f"max_total_workers must be at least 1, got {cap}")
    cpu_share = max(1, cpu * cap // (cpu + io))
    return cpu_share, max(1, cap - cpu_share)
