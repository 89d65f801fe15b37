"""Tests of the pure cluster-pressure grading of the Dask lane."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.broker._dask._pressure import (
    ClusterReading,
    ClusterThresholds,
    grade_cluster,
    parse_identity,
)

THRESHOLDS = ClusterThresholds(spill=0.7, pause=0.8, queue_factor=4.0)


def _worker(status: str, memory: int, limit: int, nthreads: int = 1) -> dict[str, object]:
    return {
        "status": status,
        "nthreads": nthreads,
        "memory_limit": limit,
        "metrics": {"memory": memory},
    }


def test_parse_identity_sums_workers() -> None:
    """Threads, paused workers, memory totals and the worst ratio come from the workers."""
    identity = {
        "workers": {
            "tcp://a": _worker("running", 100, 1000, 2),
            "tcp://b": _worker("paused", 900, 1000),
            "tcp://c": _worker("running", 50, 0),  # no limit: not in the ratio
        }
    }
    reading = parse_identity(identity, queue_depth=7)
    assert reading == ClusterReading(
        workers=3,
        threads=4,
        paused=1,
        memory_used_bytes=1050,
        memory_limit_bytes=2000,
        worst_memory_ratio=0.9,
        queue_depth=7,
    )


def test_parse_identity_tolerates_missing_fields() -> None:
    """A reply without workers, or with odd fields, reads as zeros, never raises."""
    assert parse_identity({}) == ClusterReading()
    odd = {"workers": {"tcp://a": {"nthreads": "x", "metrics": None}, "tcp://b": 3}}
    assert parse_identity(odd).threads == 0


def test_grades_each_case() -> None:
    """Each row of the grading table gives its level."""
    healthy = ClusterReading(workers=2, threads=2, worst_memory_ratio=0.5)
    assert grade_cluster(healthy, THRESHOLDS) == PressureLevel.NORMAL
    spill = ClusterReading(workers=2, threads=2, worst_memory_ratio=0.75)
    assert grade_cluster(spill, THRESHOLDS) == PressureLevel.WARNING
    one_paused = ClusterReading(workers=2, threads=2, paused=1)
    assert grade_cluster(one_paused, THRESHOLDS) == PressureLevel.WARNING
    no_workers = ClusterReading()
    assert grade_cluster(no_workers, THRESHOLDS) == PressureLevel.WARNING
    all_paused = ClusterReading(workers=2, threads=2, paused=2)
    assert grade_cluster(all_paused, THRESHOLDS) == PressureLevel.CRITICAL
    pause = ClusterReading(workers=2, threads=2, worst_memory_ratio=0.8)
    assert grade_cluster(pause, THRESHOLDS) == PressureLevel.CRITICAL
    deep = ClusterReading(workers=2, threads=2, queue_depth=9)
    assert grade_cluster(deep, THRESHOLDS) == PressureLevel.CRITICAL


def test_disabled_memory_marks_ignore_memory() -> None:
    """With spill and pause disabled (Dask's False) memory alone never raises the level."""
    reading = ClusterReading(workers=1, threads=1, worst_memory_ratio=5.0)
    assert grade_cluster(reading, ClusterThresholds(spill=None, pause=None)) == (
        PressureLevel.NORMAL
    )


@given(
    workers=st.integers(1, 50),
    paused=st.integers(0, 50),
    ratio=st.floats(0.0, 2.0),
    more=st.floats(0.0, 1.0),
    queue=st.integers(0, 1000),
)
def test_level_is_monotonic_in_memory(
    workers: int, paused: int, ratio: float, more: float, queue: int
) -> None:
    """More worker memory never lowers the cluster's level."""
    paused = min(paused, workers)
    base = ClusterReading(
        workers=workers, threads=workers, paused=paused, worst_memory_ratio=ratio, queue_depth=queue
    )
    worse = ClusterReading(
        workers=workers,
        threads=workers,
        paused=paused,
        worst_memory_ratio=ratio + more,
        queue_depth=queue,
    )
    assert grade_cluster(worse, THRESHOLDS) >= grade_cluster(base, THRESHOLDS)
