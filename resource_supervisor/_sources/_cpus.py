"""
How many CPUs this process can really use.

Covers: :func:`usable_cpu_count`, the smaller of the CPU affinity mask and the cgroup
CPU quota (rounded up). Does not cover: reading the quota files (:mod:`._cgroup`,
:func:`~._cgroup.read_cpu_quota`) or sizing worker pools from the count
(:mod:`..broker._local._sizing`).
"""

from __future__ import annotations

import math
import os

from ._cgroup import read_cpu_quota

__all__ = ("usable_cpu_count",)


def usable_cpu_count(
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    pid: int | None = None,
) -> int:
    """
    Return the number of CPUs a process can use: affinity capped by cgroup quota.

    ``min(len(os.sched_getaffinity(pid)), ceil(quota / period))``, at least 1. Where
    affinity is unavailable (not Linux, or *pid* is not a live process),
    :func:`os.cpu_count` is used instead. Reads files each call; call it when sizing
    pools, not every sample.

    Args:
        proc_root: Where procfs is mounted.
        cgroup_root: Where the cgroup hierarchies are mounted.
        pid: The process; ``None`` means this process.

    Returns:
        The usable CPU count, at least 1.
    """
    try:
        count = len(os.sched_getaffinity(0 if pid is None else pid))
    except (AttributeError, OSError):  # AttributeError: no sched_getaffinity (macOS)
        count = os.cpu_count() or 1
    quota = read_cpu_quota(proc_root=proc_root, cgroup_root=cgroup_root, pid=pid)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)
