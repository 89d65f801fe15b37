"""
The executor broker: a thread lane for blocking I/O and a process lane for CPU work.

Reached as ``sup.executors`` (:class:`Executors`). The process backends
(:mod:`._processes`, :mod:`._dask`) are imported only when a lane is built.
"""

from __future__ import annotations

from ._executors import Executors as Executors
from ._executors import split_worker_budget as split_worker_budget
from ._std_executors import LaneProcessExecutor as LaneProcessExecutor
from ._std_executors import LaneThreadExecutor as LaneThreadExecutor
from ._threads import ThreadLane as ThreadLane
from ._threads import ThreadLaneStatistics as ThreadLaneStatistics

__all__ = (
    "Executors",
    "LaneProcessExecutor",
    "LaneThreadExecutor",
    "ThreadLane",
    "ThreadLaneStatistics",
    "split_worker_budget",
)
