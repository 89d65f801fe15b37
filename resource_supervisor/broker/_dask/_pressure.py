"""
Pure grading of a Dask cluster's own pressure: scheduler identity -> :class:`PressureLevel`.

Covers: :class:`ClusterReading` (the figures the Dask lane polls: workers, threads,
paused workers, worker memory against each worker's limit, scheduler queue depth),
:func:`parse_identity` (the scheduler's ``identity()`` reply -> reading) and
:func:`grade_cluster` (reading -> level). Everything here is pure: no I/O, no clock,
no await.

Does not cover: polling the scheduler (:mod:`._cluster`) or admission
(:mod:`._lane`). The supervisor's own level is graded by :mod:`..._policy`; the Dask
lane uses the worse of the two.

The levels, with Dask's worker thresholds (fractions of each worker's
``memory_limit``; ``distributed.worker.memory.spill`` 0.7 and ``.pause`` 0.8 by
default)::

    NORMAL    every worker below spill, none paused, queue short
    WARNING   some worker >= spill, or some (not all) workers paused, or no worker
    CRITICAL  every worker paused, or some worker >= pause, or the scheduler
              queue deeper than ``queue_factor`` x total threads

No hysteresis here: a worker's own pause/unpause already has one (it unpauses
below the spill fraction), and the reading lags one heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ("ClusterReading", "ClusterThresholds", "grade_cluster", "parse_identity")


@dataclass(frozen=True, slots=True)
class ClusterReading:
    """
    One poll of the cluster, as plain numbers.
    """

    workers: int = 0
    threads: int = 0
    paused: int = 0
    memory_used_bytes: int = 0
    memory_limit_bytes: int = 0
    """Sum of the workers' limits; workers without a limit count 0."""
    worst_memory_ratio: float = 0.0
    """Largest ``memory / memory_limit`` over workers that have a limit."""
    queue_depth: int = 0
    """Tasks the scheduler holds back (``queued`` + ``unrunnable``); 0 if unknown."""


@dataclass(frozen=True, slots=True)
class ClusterThresholds:
    """
    Where the cluster enters WARNING and CRITICAL; ``None`` disables a memory mark.
    """

    spill: float | None = 0.7
    pause: float | None = 0.8
    queue_factor: float = 4.0


def _number(value: object) -> float:
    """A float from a scheduler field, 0 for anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def parse_identity(identity: Mapping[str, object], *, queue_depth: int = 0) -> ClusterReading:
    """
    Build a reading from ``Scheduler.identity(n_workers=-1)``.

    Args:
        identity: The scheduler's reply; per worker ``status``, ``nthreads``,
            ``memory_limit`` and ``metrics.memory`` are read, anything missing counts 0.
        queue_depth: The scheduler's held-back tasks, read separately.

    Returns:
        The reading.
    """
    workers = identity.get("workers")
    if not isinstance(workers, dict):
        workers = {}
    threads = paused = used_total = limit_total = 0
    worst = 0.0
    for info in workers.values():
        if not isinstance(info, dict):
            continue
        threads += int(_number(info.get("nthreads")))
        if info.get("status") == "paused":
            paused += 1
        metrics = info.get("metrics")
        used = int(_number(metrics.get("memory"))) if isinstance(metrics, dict) else 0
        limit = int(_number(info.get("memory_limit")))
        used_total += used
        limit_total += limit
        if limit > 0:
            worst = max(worst, used / limit)
    return ClusterReading(
        workers=len(workers),
        threads=threads,
        paused=paused,
        memory_used_bytes=used_total,
        memory_limit_bytes=limit_total,
        worst_memory_ratio=worst,
        queue_depth=max(0, queue_depth),
    )


def grade_cluster(reading: ClusterReading, thresholds: ClusterThresholds) -> PressureLevel:
    """
    Grade *reading*: see the table in the module docstring.

    Args:
        reading: The latest poll.
        thresholds: The worker memory fractions and the queue factor.

    Returns:
        The cluster's level.
    """
    ratio = reading.worst_memory_ratio
    # The cases, worst first: all paused; one worker past pause; queue too deep.
    if reading.workers > 0 and reading.paused == reading.workers:
        return PressureLevel.CRITICAL
    if thresholds.pause is not None and ratio >= thresholds.pause:
        return PressureLevel.CRITICAL
    if reading.queue_depth > thresholds.queue_factor * max(1, reading.threads):
        return PressureLevel.CRITICAL
    # Then: no worker at all (restarting), some paused, one worker past spill.
    if reading.workers == 0 or reading.paused > 0:
        return PressureLevel.WARNING
    if thresholds.spill is not None and ratio >= thresholds.spill:
        return PressureLevel.WARNING
    return PressureLevel.NORMAL
