"""
The pure parts of reading cgroups: parsers of the kernel's cgroup files and the
effective memory figures.

Covers: ``/proc/<pid>/cgroup`` (:func:`parse_proc_cgroup`), ``memory.max`` /
``memory.limit_in_bytes``, ``memory.stat``, ``cpu.max`` and ``cpu.cfs_*``, and
:func:`effective_memory`, which picks the smallest limit among host and cgroup. No
I/O: the files are read by :mod:`._cgroup`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from ._proc import HostMemory

__all__ = (
    "UNLIMITED_THRESHOLD_BYTES",
    "CgroupMemory",
    "CgroupPaths",
    "CgroupVersion",
    "LimitSource",
    "MemoryFigures",
    "effective_memory",
    "parse_cfs_quota",
    "parse_cpu_max",
    "parse_memory_limit",
    "parse_memory_stat",
    "parse_proc_cgroup",
)

#: v1 reports "no limit" as a huge page-aligned number (9223372036854771712 on 4 KiB
#: pages); anything at or above 2**60 bytes (1 EiB) is read as unlimited.
UNLIMITED_THRESHOLD_BYTES: Final = 2**60

CgroupVersion = Literal["cgroup_v1", "cgroup_v2"]
LimitSource = Literal["host", "cgroup_v1", "cgroup_v2"]


# -- pure parsers --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupPaths:
    """The cgroup paths of one process, from ``/proc/<pid>/cgroup``."""

    v2: str | None = None
    v1: dict[str, str] = field(default_factory=dict)
    """Controller name (``"memory"``, ``"cpu"``) to path."""


def parse_proc_cgroup(text: str) -> CgroupPaths:
    """
    Parse ``/proc/<pid>/cgroup``.

    Each line is ``hierarchy-id:controllers:path``. The v2 line is ``0::/path``; v1
    lines list comma-separated controllers (``4:memory:/a``, ``2:cpu,cpuacct:/a``).
    Named v1 hierarchies (``name=systemd``) and malformed lines are ignored.

    Args:
        text: The file's content.

    Returns:
        The v2 path (or ``None``) and each v1 controller's path.
    """
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            v2 = path
            continue
        for controller in controllers.split(","):
            if controller and not controller.startswith("name="):
                v1[controller] = path
    return CgroupPaths(v2=v2, v1=v1)


def parse_memory_limit(text: str | bytes) -> int | None:
    """
    Parse a memory limit file (v2 ``memory.max``, v1 ``memory.limit_in_bytes``).

    Args:
        text: The file's content.

    Returns:
        The limit in bytes, or ``None`` for no limit (``"max"``, or a value of at
        least :data:`UNLIMITED_THRESHOLD_BYTES`, or a negative value).

    Raises:
        ValueError: If the content is neither ``max`` nor an integer.
    """
    value = (text.decode("ascii") if isinstance(text, bytes) else text).strip()
    if value == "max":
        return None
    limit = int(value)
    if limit < 0 or limit >= UNLIMITED_THRESHOLD_BYTES:
        return None
    return limit


def parse_memory_stat(data: bytes, key: str) -> int | None:
    """
    Find one counter in a ``memory.stat`` file (``key value`` per line).

    Args:
        data: The file's bytes.
        key: The counter, e.g. ``"inactive_file"`` (v2) or ``"total_inactive_file"``
            (v1, hierarchical).

    Returns:
        The value, or ``None`` when the key is absent.

    Raises:
        ValueError: If the value is not an integer.
    """
    needle = key.encode() + b" "
    if data.startswith(needle):
        start = 0
    else:
        start = data.find(b"\n" + needle) + 1
        if start == 0:
            return None
    end = data.find(b"\n", start)
    return int(data[start + len(needle) : end if end >= 0 else len(data)])


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """
    Parse v2 ``cpu.max``: ``"<quota> <period>"`` where quota may be ``max``.

    Args:
        text: The file's content (``"max 100000"``, ``"150000 100000"``; a lone
            quota uses the default 100000 us period).

    Returns:
        ``(quota_us or None for no quota, period_us)``.

    Raises:
        ValueError: If the content is malformed or the period is not positive.
    """
    fields = text.split()
    if not 1 <= len(fields) <= 2:
        raise ValueError(f"malformed cpu.max: {text!r}")
    period = int(fields[1]) if len(fields) == 2 else 100_000
    if period <= 0:
        raise ValueError(f"cpu.max period must be positive: {text!r}")
    if fields[0] == "max":
        return None, period
    quota = int(fields[0])
    return (quota if quota > 0 else None), period


def parse_cfs_quota(quota_text: str, period_text: str) -> tuple[int | None, int]:
    """
    Parse v1 ``cpu.cfs_quota_us`` (``-1`` = no quota) and ``cpu.cfs_period_us``.

    Args:
        quota_text: Content of ``cpu.cfs_quota_us``.
        period_text: Content of ``cpu.cfs_period_us``.

    Returns:
        ``(quota_us or None for no quota, period_us)``.

    Raises:
        ValueError: If either is not an integer or the period is not positive.
    """
    quota = int(quota_text.strip())
    period = int(period_text.strip())
    if period <= 0:
        raise ValueError(f"cpu.cfs_period_us must be positive: {period_text!r}")
    return (quota if quota > 0 else None), period


# -- the effective limit (pure) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """One read of a memory cgroup, in bytes."""

    version: CgroupVersion
    usage_bytes: int
    inactive_file_bytes: int
    limit_bytes: int | None
    """Smallest limit of the cgroup and its ancestors, ``None`` when none applies."""

    @property
    def working_set_bytes(self) -> int:
        """Usage minus inactive file cache (what the OOM killer weighs), never negative."""
        return max(0, self.usage_bytes - self.inactive_file_bytes)


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """The memory figures of one sample."""

    used_bytes: int
    limit_bytes: int
    source: LimitSource
    cgroup_limit_bytes: int | None

    @property
    def percent(self) -> float:
        """Used as a percent of the limit (0.0 when the limit is unknown)."""
        return self.used_bytes / self.limit_bytes * 100.0 if self.limit_bytes > 0 else 0.0


def effective_memory(host: HostMemory, cgroup: CgroupMemory | None) -> MemoryFigures:
    """
    Pick the effective memory limit and usage. Pure: no I/O.

    Cases: no cgroup, or a cgroup without a limit, or a limit above host memory (a
    limit the host can never reach) -> host figures (``MemTotal - MemAvailable`` of
    ``MemTotal``); otherwise the cgroup's working set of its limit.

    Args:
        host: Host memory from ``/proc/meminfo``.
        cgroup: The cgroup read, or ``None`` when there is none.

    Returns:
        Used and limit bytes, where the limit comes from, and the cgroup limit that
        applies (``None`` for host).
    """
    limit = None if cgroup is None else cgroup.limit_bytes
    if cgroup is None or limit is None or limit > host.total_bytes > 0:
        return MemoryFigures(
            used_bytes=host.used_bytes,
            limit_bytes=host.total_bytes,
            source="host",
            cgroup_limit_bytes=None,
        )
    return MemoryFigures(
        used_bytes=cgroup.working_set_bytes,
        limit_bytes=limit,
        source=cgroup.version,
        cgroup_limit_bytes=limit,
    )


# -- locating a process's cgroup -----------------------------------------------------
