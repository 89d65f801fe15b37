"""
Worker memory of the local process lane: measuring it, the OOM killer, and relief.

Covers: :func:`measure_workers` (each worker's resident memory, into its slot),
:func:`memory_victim` (pure: which worker to kill at CRITICAL pressure) and
:class:`OomKillCounter` (the memory cgroup's count of OOM kills, to tell a worker
the kernel killed from one that crashed). Does not cover: killing and replacing
the worker (:mod:`._kills`, :mod:`._slot_life`), the workers' ``oom_score_adj``
(:func:`._worker.init_worker`), recycling by RSS between calls
(:mod:`._recycling`) or the headroom for new workers (:mod:`._headroom`).

At CRITICAL the lane kills the largest worker when it holds more resident memory
than the service itself, so the kernel, if it must choose, is not left to weigh
the service against a worker; its call fails with :class:`WorkerCrashedError`
and ``reason="memory_pressure"``. When a worker dies without the lane killing it
and the cgroup's counter (v2 ``memory.events``, v1 ``memory.oom_control``: the
``oom_kill`` line) rose meanwhile, the kernel's OOM killer took it: the call fails
with ``reason="oom_kill"`` and ``process_oom_kills_total`` counts it.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from ..._sources._cgroup import locate_cgroup
from ._recycling import rss_bytes

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from ._slot import Slot

__all__ = ("OomKillCounter", "measure_workers", "memory_victim", "parse_oom_kills")


def measure_workers(slots: Iterable[Slot]) -> None:
    """
    Read each started worker's resident memory into ``slot.rss_bytes`` (psutil).

    Args:
        slots: The lane's live slots; those without a pid are left alone.
    """
    for slot in slots:
        if slot.pid:
            slot.rss_bytes = rss_bytes(slot.pid)


def memory_victim(workers: Sequence[tuple[int, int]], service_rss_bytes: int) -> int | None:
    """
    Return which worker to kill at CRITICAL pressure, if any. Pure.

    Args:
        workers: ``(index, resident bytes)`` per started worker.
        service_rss_bytes: The service's own resident memory.

    Returns:
        The index of the largest worker when it holds more than the service (and
        so more than any other process of the lane); ``None`` otherwise.
    """
    if not workers:
        return None
    index, largest = max(workers, key=lambda worker: worker[1])
    return index if largest > service_rss_bytes else None


def parse_oom_kills(text: str) -> int | None:
    """
    Return the ``oom_kill`` count of a ``memory.events`` or ``memory.oom_control`` file.

    Args:
        text: The file's content.

    Returns:
        The count, or ``None`` when the file has no ``oom_kill`` line (old kernels).
    """
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


class OomKillCounter:
    """The OOM kills counted in this process's memory cgroup, read on demand."""

    def __init__(self, *, proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> None:
        """
        Prepare the counter; the cgroup is located on the first read.

        Args:
            proc_root: Where procfs is mounted.
            cgroup_root: Where the cgroup hierarchies are mounted.
        """
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._path: str | None = None
        self._located = False
        self._last: int | None = None
        self._lock = threading.Lock()  # start and rose run in worker threads, maybe at once

    def _read(self) -> int | None:
        if not self._located:
            self._located = True
            location = locate_cgroup(
                "memory", proc_root=self._proc_root, cgroup_root=self._cgroup_root
            )
            if location is not None:
                name = "memory.events" if location.version == "cgroup_v2" else "memory.oom_control"
                self._path = os.path.join(location.directory, name)
        if self._path is None:
            return None
        try:
            with open(self._path, encoding="ascii") as file:
                return parse_oom_kills(file.read())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Take the count now as the baseline (blocking: it reads files; call from a thread)."""
        with self._lock:
            self._last = self._read()

    def rose(self) -> bool:
        """
        Return whether OOM kills were counted since the last :meth:`start` or call
        (blocking: it reads a file; call from a thread).

        Returns:
            True when the count grew; False when it did not or cannot be read.
        """
        with self._lock:
            count = self._read()
            if count is None:
                return False
            grew = self._last is not None and count > self._last
            self._last = count
            return grew
