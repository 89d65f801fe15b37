"""
The executor broker: a thread lane for blocking I/O and a process lane for CPU work.

Reached as ``sup.executors`` (:class:`Executors`). The process backends
(:mod:`._local._lane`, :mod:`._dask._lane`) are imported only when a lane is built.

The public names are imported on first use (PEP 562), so a process-lane worker
that imports :mod:`._local._worker` loads neither the lanes nor anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._executors import Executors as Executors
    from ._executors import split_worker_budget as split_worker_budget
    from ._std_executors import LaneProcessExecutor as LaneProcessExecutor
    from ._std_executors import LaneThreadExecutor as LaneThreadExecutor
    from ._threads import ThreadLane as ThreadLane
    from ._threads import ThreadLaneStatistics as ThreadLaneStatistics

# public name -> private module defining it, imported on first attribute access
_LAZY: dict[str, str] = {
    "Executors": "._executors",
    "split_worker_budget": "._executors",
    "LaneProcessExecutor": "._std_executors",
    "LaneThreadExecutor": "._std_executors",
    "ThreadLane": "._threads",
    "ThreadLaneStatistics": "._threads",
}

__all__ = (
    "Executors",
    "LaneProcessExecutor",
    "LaneThreadExecutor",
    "ThreadLane",
    "ThreadLaneStatistics",
    "split_worker_budget",
)


if not TYPE_CHECKING:  # type checkers see the imports above, and no __getattr__

    def __getattr__(name: str) -> object:
        """Import a public name's module on first access (PEP 562) and keep the value."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
