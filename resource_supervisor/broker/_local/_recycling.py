"""
When the local process lane recycles a worker.

Covers: the ``max_tasks_per_worker`` and ``worker_max_rss_bytes`` rules
(:func:`recycle_due`, :func:`calls_left`) and reading a worker's resident memory
(:func:`rss_bytes`, psutil). Does not cover: retiring the worker and starting its
replacement (:mod:`._delivery`, :mod:`._slot_life`), how many workers the lane
keeps (:mod:`._sizing`) or how batches respect the quota (:mod:`._dispatch`). See
also :mod:`._slot` for the slot's count of calls done.

A worker is recycled once the calls it has run reach ``max_tasks_per_worker``, or
when its resident memory is above ``worker_max_rss_bytes`` after a batch. Both are
checked only between batches, never while a call runs.
"""

from __future__ import annotations

import psutil

__all__ = ("calls_left", "recycle_due", "rss_bytes")


def calls_left(calls_done: int, max_tasks: int | None) -> int | None:
    """
    Return how many calls a worker may still run before it is recycled.

    Args:
        calls_done: Calls the worker has run.
        max_tasks: The ``max_tasks_per_worker`` setting; ``None`` for no quota.

    Returns:
        ``None`` for no quota, else ``max_tasks - calls_done`` (may be <= 0).
    """
    return None if max_tasks is None else max_tasks - calls_done


def recycle_due(
    *, calls_done: int, pid: int, max_tasks: int | None, max_rss_bytes: int | None
) -> bool:
    """
    Return whether a worker that just finished its calls should be recycled.

    Args:
        calls_done: Calls the worker has run.
        pid: Its process id (read only when *max_rss_bytes* is set).
        max_tasks: The ``max_tasks_per_worker`` setting, or ``None``.
        max_rss_bytes: The ``worker_max_rss_bytes`` setting, or ``None``.

    Returns:
        True after *max_tasks* calls, or with resident memory above *max_rss_bytes*.
    """
    if max_tasks is not None and calls_done >= max_tasks:
        return True
    return max_rss_bytes is not None and rss_bytes(pid) > max_rss_bytes


def rss_bytes(pid: int) -> int:
    """
    Return the resident memory of process *pid* in bytes.

    Args:
        pid: A process id.

    Returns:
        Its resident set size, or 0 if it cannot be read (e.g. it is gone).
    """
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0
