"""
Memory and CPU limits from cgroup v1 and v2, and the effective memory figures.

Covers: finding this process's cgroup from ``<proc_root>/<pid>/cgroup`` under a
``<cgroup_root>`` mount (v2 at the root or at ``unified/`` in the hybrid layout, v1
``memory/`` and ``cpu/``; a path missing under the mount, as inside a container,
falls back to the mount root); :class:`CgroupMemoryReader`, which keeps the usage,
stat and limit files (of the cgroup and every ancestor) open and preads them each
sample; and :func:`read_cpu_quota` (a rare read, files opened and closed each call).
The pure parsers and :func:`effective_memory` live in :mod:`._cgroup_parsing` and are
re-exported here.

Does not cover: host figures (:mod:`._proc`), pressure stall information
(:mod:`._psi`), or the usable CPU count (:mod:`._cpus`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, Literal

from ._cgroup_parsing import (
    UNLIMITED_THRESHOLD_BYTES,
    CgroupMemory,
    CgroupPaths,
    CgroupVersion,
    MemoryFigures,
    effective_memory,
    parse_cfs_quota,
    parse_cpu_max,
    parse_memory_limit,
    parse_memory_stat,
    parse_proc_cgroup,
)
from ._kept_open import KeptOpen
from ._proc import pread_all

__all__ = (
    "UNLIMITED_THRESHOLD_BYTES",
    "CgroupLocation",
    "CgroupMemory",
    "CgroupMemoryReader",
    "CgroupPaths",
    "MemoryFigures",
    "effective_memory",
    "locate_cgroup",
    "locate_v2_cgroup",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_memory_limit",
    "parse_memory_stat",
    "parse_proc_cgroup",
    "read_cpu_quota",
)

_V1_CPU_MOUNTS: Final = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True, slots=True)
class CgroupLocation:
    """Where a process's cgroup lives on disk."""

    version: CgroupVersion
    directory: str
    """The cgroup's own directory (the mount root when its path is not found)."""
    chain: tuple[str, ...]
    """The directory and each ancestor up to and including the mount root."""


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def _v2_mount(cgroup_root: str) -> str | None:
    # Unified layout: cgroup2 mounted at the root; hybrid: at <root>/unified.
    for mount in (cgroup_root, os.path.join(cgroup_root, "unified")):
        if os.path.isfile(os.path.join(mount, "cgroup.controllers")):
            return mount
    return None


def _resolve(mount: str, path: str) -> tuple[str, tuple[str, ...]]:
    relative = path.strip("/")
    directory = os.path.join(mount, relative) if relative else mount
    if not relative or not os.path.isdir(directory):
        # Inside a container the host's path is not visible: the container's own
        # cgroup is mounted at the root.
        return mount, (mount,)
    chain = [directory]
    parts = relative.split("/")
    while parts:
        parts.pop()
        chain.append(os.path.join(mount, *parts) if parts else mount)
    return directory, tuple(chain)


def locate_cgroup(
    controller: Literal["memory", "cpu"],
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    pid: int | None = None,
) -> CgroupLocation | None:
    """
    Find the cgroup that governs *controller* for a process.

    A v1 hierarchy for the controller wins when the process is in one and it is
    mounted (``<cgroup_root>/memory``, ``<cgroup_root>/cpu[,cpuacct]``); otherwise
    the v2 cgroup is used when cgroup2 is mounted at the root or at ``unified/``.

    Args:
        controller: ``"memory"`` or ``"cpu"``.
        proc_root: Where procfs is mounted.
        cgroup_root: Where the cgroup hierarchies are mounted.
        pid: The process; ``None`` means this process.

    Returns:
        The cgroup's version, directory and ancestor chain, or ``None`` when the
        process's cgroup file or the mount cannot be found.
    """
    text = _read_text(os.path.join(proc_root, str(os.getpid() if pid is None else pid), "cgroup"))
    if text is None:
        return None
    paths = parse_proc_cgroup(text)
    v1_path = paths.v1.get(controller)
    if v1_path is not None:
        names = ("memory",) if controller == "memory" else _V1_CPU_MOUNTS
        for name in names:
            mount = os.path.join(cgroup_root, name)
            if os.path.isdir(mount):
                directory, chain = _resolve(mount, v1_path)
                return CgroupLocation("cgroup_v1", directory, chain)
    if paths.v2 is not None:
        mount_v2 = _v2_mount(cgroup_root)
        if mount_v2 is not None:
            directory, chain = _resolve(mount_v2, paths.v2)
            return CgroupLocation("cgroup_v2", directory, chain)
    return None


def locate_v2_cgroup(
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    pid: int | None = None,
) -> str | None:
    """
    Find a process's cgroup v2 directory, whatever controllers it has.

    Args:
        proc_root: Where procfs is mounted.
        cgroup_root: Where the cgroup hierarchies are mounted (cgroup2 at the root, or
            at ``unified/`` in the hybrid layout).
        pid: The process; ``None`` means this process.

    Returns:
        The directory (the mount root when the path is not found under it), or
        ``None`` when the process has no v2 cgroup or cgroup2 is not mounted.
    """
    text = _read_text(os.path.join(proc_root, str(os.getpid() if pid is None else pid), "cgroup"))
    if text is None:
        return None
    path = parse_proc_cgroup(text).v2
    mount = _v2_mount(cgroup_root)
    if path is None or mount is None:
        return None
    return _resolve(mount, path)[0]


# -- kept-open memory reads ----------------------------------------------------------


class CgroupMemoryReader(KeptOpen):
    """
    Kept-open reads of a process's memory cgroup, v1 or v2.

    :meth:`open` locates the cgroup and opens its usage and ``memory.stat`` files and
    the limit file of the cgroup and every ancestor; :meth:`read` preads them all, so
    a limit changed at runtime is seen on the next read. Not thread-safe.
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid: int | None = None,
    ) -> None:
        """
        Prepare a reader; nothing is opened until :meth:`open`.

        Args:
            proc_root: Where procfs is mounted.
            cgroup_root: Where the cgroup hierarchies are mounted.
            pid: The process; ``None`` means this process.
        """
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._pid = pid
        self._location: CgroupLocation | None = None
        self._usage_fd: int | None = None
        self._stat_fd: int | None = None
        self._limit_fds: list[int] = []

    @property
    def location(self) -> CgroupLocation | None:
        """The cgroup found by :meth:`open`, or ``None`` (no usable memory cgroup)."""
        return self._location

    def open(self) -> None:
        """
        Locate the cgroup and open its files; idempotent. Never raises for a missing
        cgroup: :attr:`location` stays ``None`` and :meth:`read` returns ``None``.
        """
        if self._usage_fd is not None:
            return
        location = locate_cgroup(
            "memory", proc_root=self._proc_root, cgroup_root=self._cgroup_root, pid=self._pid
        )
        if location is None:
            return
        v2 = location.version == "cgroup_v2"
        usage_fd = _open_or_none(
            os.path.join(location.directory, "memory.current" if v2 else "memory.usage_in_bytes")
        )
        if usage_fd is None:
            # e.g. hybrid layout with the memory controller on v1 only, or the v2 root.
            return
        self._location = location
        self._usage_fd = usage_fd
        self._stat_fd = _open_or_none(os.path.join(location.directory, "memory.stat"))
        limit_name = "memory.max" if v2 else "memory.limit_in_bytes"
        for directory in location.chain:
            fd = _open_or_none(os.path.join(directory, limit_name))
            if fd is not None:
                self._limit_fds.append(fd)

    def close(self) -> None:
        """Close every kept-open file; idempotent."""
        fds = [fd for fd in (self._usage_fd, self._stat_fd) if fd is not None]
        fds.extend(self._limit_fds)
        self._usage_fd = self._stat_fd = None
        self._limit_fds = []
        self._location = None
        for fd in fds:
            os.close(fd)

    def read_limit(self) -> int | None:
        """
        Read the smallest limit of the cgroup and its ancestors.

        Returns:
            The limit in bytes, or ``None`` when no limit applies or no memory
            cgroup was found.

        Raises:
            OSError: If a kept-open file can no longer be read (cgroup removed).
            ValueError: If a file's content cannot be parsed.
        """
        limit: int | None = None
        for fd in self._limit_fds:
            value = parse_memory_limit(os.pread(fd, 64, 0))
            if value is not None and (limit is None or value < limit):
                limit = value
        return limit

    def read(self, *, limit: int | None = None) -> CgroupMemory | None:
        """
        Read usage, inactive file cache and the smallest limit up the chain.

        Args:
            limit: A limit just read with :meth:`read_limit`, to save reading it
                again; ``None`` reads it.

        Returns:
            The figures, or ``None`` when no memory cgroup was found.

        Raises:
            OSError: If a kept-open file can no longer be read (cgroup removed).
            ValueError: If a file's content cannot be parsed.
        """
        location = self._location
        if location is None or self._usage_fd is None:
            return None
        usage = int(os.pread(self._usage_fd, 64, 0))
        inactive = 0
        if self._stat_fd is not None:
            key = "inactive_file" if location.version == "cgroup_v2" else "total_inactive_file"
            inactive = parse_memory_stat(pread_all(self._stat_fd, 8192), key) or 0
        return CgroupMemory(
            version=location.version,
            usage_bytes=usage,
            inactive_file_bytes=inactive,
            limit_bytes=self.read_limit() if limit is None else limit,
        )


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


# -- CPU quota (rare read) -----------------------------------------------------------


def read_cpu_quota(
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    pid: int | None = None,
) -> float | None:
    """
    Return the CPU quota of a process's cgroup as a number of CPUs.

    The smallest ``quota / period`` over the cgroup and its ancestors (v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). Files are opened
    and closed on each call: this is read once when sizing pools, not every sample.

    Args:
        proc_root: Where procfs is mounted.
        cgroup_root: Where the cgroup hierarchies are mounted.
        pid: The process; ``None`` means this process.

    Returns:
        CPUs allowed (e.g. ``1.5``), or ``None`` when there is no quota or no
        cgroup. Unreadable or malformed files count as no quota.
    """
    location = locate_cgroup("cpu", proc_root=proc_root, cgroup_root=cgroup_root, pid=pid)
    if location is None:
        return None
    best: float | None = None
    for directory in location.chain:
        try:
            if location.version == "cgroup_v2":
                text = _read_text(os.path.join(directory, "cpu.max"))
                if text is None:
                    continue
                quota, period = parse_cpu_max(text)
            else:
                quota_text = _read_text(os.path.join(directory, "cpu.cfs_quota_us"))
                period_text = _read_text(os.path.join(directory, "cpu.cfs_period_us"))
                if quota_text is None or period_text is None:
                    continue
                quota, period = parse_cfs_quota(quota_text, period_text)
        except ValueError:
            continue
        if quota is not None and (best is None or quota / period < best):
            best = quota / period
    return best
