"""
How much memory is left for new worker processes of the local process lane.

Covers: :class:`MemoryHeadroom` (bytes that can still be used: the host's
``MemAvailable``, and below a memory cgroup's limit what its working set leaves)
and :func:`startable_workers` (how many more workers fit, pure). Does not cover:
when the lane starts workers (:mod:`._resizing`, :mod:`._sizing`), the
supervisor's own memory figures and pressure levels (:mod:`..._sampler`,
:mod:`..._policy`), or a worker's memory (:mod:`._worker_memory`).

Why: every call that waits for a worker may start one, each costs tens of MiB
before it runs anything, and a burst of calls in a small container could start
more than the container holds. The lane therefore starts no more workers at once
than the headroom holds, judged by the largest worker it has measured.

The figures are read when the lane is about to start workers (a few small
reads: ``/proc/meminfo`` and the kept-open cgroup files), not on every call.
"""

from __future__ import annotations

import os
import threading
from typing import Final

from ..._sources._cgroup import CgroupMemoryReader
from ..._sources._proc import parse_meminfo, pread_all

__all__ = ("WORKER_BYTES_FLOOR", "MemoryHeadroom", "startable_workers")

WORKER_BYTES_FLOOR: Final = 32 * 1024 * 1024
"""Least memory a worker is assumed to need, before and beside what is measured."""


def startable_workers(
    available_bytes: int | None, worker_bytes: int, *, live: int, starting: int
) -> int | None:
    """
    Return how many more workers fit in *available_bytes*. Pure.

    Args:
        available_bytes: Memory that can still be used; ``None`` when unknown.
        worker_bytes: What one worker is expected to need (at least
            :data:`WORKER_BYTES_FLOOR` is assumed).
        live: Workers the lane has now (started or starting).
        starting: Of those, the ones still starting: their memory is not in
            *available_bytes* yet.

    Returns:
        ``None`` (no bound) when the headroom is unknown; otherwise the workers
        that fit, and at least one while the lane has none, so calls can run.
    """
    if available_bytes is None:
        return None
    fit = max(0, available_bytes) // max(worker_bytes, WORKER_BYTES_FLOOR) - starting
    return max(fit, 1 if live == 0 else 0)


class MemoryHeadroom:
    """
    Reads of the memory this process may still use (see the module docstring).

    Nothing is opened before the first :meth:`available_bytes`; :meth:`close`
    closes the kept-open cgroup files. :meth:`open` may run in any thread; the
    reads are the lane's loop's (kept-open files, ``pread``).
    """

    def __init__(self, *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        """
        Prepare the reads; nothing is opened here.

        Args:
            proc_root: Where procfs is mounted.
            cgroup_root: Where the cgroup hierarchies are mounted.
        """
        self._meminfo = os.path.join(proc_root, "meminfo")
        self._cgroup = CgroupMemoryReader(proc_root=proc_root, cgroup_root=cgroup_root)
        self._opened = False
        self._lock = threading.Lock()  # open() may run in two threads at once

    @property
    def opened(self) -> bool:
        """Whether the cgroup files are located and open."""
        return self._opened

    def open(self) -> None:
        """
        Locate and open the cgroup files now; idempotent (blocking: it reads /proc, so
        the lane calls it from a thread before its first call needs it).
        """
        with self._lock:
            if not self._opened:
                self._cgroup.open()
                self._opened = True

    def available_bytes(self) -> int | None:
        """
        Return the bytes this process may still use, or ``None`` when unknown.

        Returns:
            The smaller of the host's available memory and, under a cgroup
            limit, the limit minus the cgroup's working set.
        """
        if not self._opened:  # not opened ahead (see open): open here, once
            self.open()
        available: int | None = None
        try:
            fd = os.open(self._meminfo, os.O_RDONLY | os.O_CLOEXEC)
            try:
                available = parse_meminfo(pread_all(fd)).available_bytes
            finally:
                os.close(fd)
        except (OSError, ValueError):
            pass
        try:
            cgroup = self._cgroup.read()
        except (OSError, ValueError):
            cgroup = None
        if cgroup is not None and cgroup.limit_bytes is not None:
            left = cgroup.limit_bytes - cgroup.working_set_bytes
            available = left if available is None else min(available, left)
        return available

    def close(self) -> None:
        """Close the kept-open cgroup files; idempotent (a later read opens them again)."""
        with self._lock:
            self._cgroup.close()
            self._opened = False
