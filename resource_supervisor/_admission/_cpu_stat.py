"""
CPU throttling of the process's cgroup, from ``cpu.stat``.

Covers: :func:`parse_cpu_stat` (pure; v1 ``nr_periods``, ``nr_throttled``,
``throttled_time`` in nanoseconds; v2 the same counts and ``throttled_usec``),
:func:`throttled_ratio` (pure: the share of scheduler periods throttled between two
reads) and :class:`CpuStatReader`, which keeps the cgroup's ``cpu.stat`` open and
reads it with one ``pread``. Does not cover: the quota itself
(:func:`resource_supervisor._sources._cgroup.read_cpu_quota`) or what throttling
does to admission (:mod:`._pressure`).

A cgroup without a CPU quota is never throttled: its counters stay at zero, and a
v2 cgroup without the ``cpu`` controller has no throttling keys at all (the reader
then returns ``None``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .._sources._cgroup import locate_cgroup
from .._sources._kept_open import KeptOpen

__all__ = ("CpuStat", "CpuStatReader", "parse_cpu_stat", "throttled_ratio")


@dataclass(frozen=True, slots=True)
class CpuStat:
    """
    The throttling counters of one ``cpu.stat`` read.

    Attributes:
        periods: Enforcement periods that elapsed with runnable tasks (``nr_periods``).
        throttled_periods: Periods in which the cgroup hit its quota (``nr_throttled``).
        throttled_seconds: Total time its tasks were throttled.
    """

    periods: int
    throttled_periods: int
    throttled_seconds: float


def parse_cpu_stat(data: bytes | str) -> CpuStat | None:
    """
    Parse a v1 or v2 ``cpu.stat``. Pure.

    Args:
        data: The file's content.

    Returns:
        The counters, or ``None`` when the throttling keys are absent (a v2 cgroup
        without the ``cpu`` controller). Lines that are not ``key value`` pairs are
        skipped.
    """
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    periods = values.get("nr_periods")
    throttled = values.get("nr_throttled")
    if periods is None or throttled is None:
        return None
    if "throttled_usec" in values:
        seconds = values["throttled_usec"] / 1e6
    else:
        seconds = values.get("throttled_time", 0) / 1e9
    return CpuStat(periods, throttled, seconds)


def throttled_ratio(previous: CpuStat | None, current: CpuStat | None) -> float:
    """
    The share of enforcement periods that were throttled between two reads. Pure.

    Args:
        previous: The earlier read.
        current: The later read.

    Returns:
        A number in ``[0, 1]``; ``0.0`` when no period elapsed (no quota, or an
        idle cgroup); NaN when either read is missing or the counters went back
        (the cgroup was recreated).
    """
    if previous is None or current is None:
        return math.nan
    periods = current.periods - previous.periods
    throttled = current.throttled_periods - previous.throttled_periods
    if periods < 0 or throttled < 0:
        return math.nan
    if periods == 0:
        return 0.0
    return min(1.0, throttled / periods)


class CpuStatReader(KeptOpen):
    """
    Keeps the ``cpu.stat`` of a process's CPU cgroup open; :meth:`read` costs one
    ``pread`` (microseconds), so it is safe on the event loop at every sample.

    Args:
        proc_root: Where procfs is mounted.
        cgroup_root: Where the cgroup hierarchies are mounted.
        pid: The process; ``None`` means this process.
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid: int | None = None,
    ) -> None:
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._pid = pid
        self._fd: int | None = None
        self._path: str | None = None

    @property
    def path(self) -> str | None:
        """The ``cpu.stat`` file being read, once opened and found."""
        return self._path

    def open(self) -> None:
        """Find the cgroup and open its ``cpu.stat``; idempotent. No cgroup: reads give None."""
        if self._fd is not None:
            return
        location = locate_cgroup(
            "cpu", proc_root=self._proc_root, cgroup_root=self._cgroup_root, pid=self._pid
        )
        if location is None:
            return
        path = os.path.join(location.directory, "cpu.stat")
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        self._path = path

    def close(self) -> None:
        """Close the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def read(self) -> CpuStat | None:
        """
        Read the counters now.

        Returns:
            The counters, or ``None`` when the file is not open, cannot be read, or
            has no throttling keys.
        """
        if self._fd is None:
            return None
        try:
            data = os.pread(self._fd, 4096, 0)
        except OSError:
            return None
        return parse_cpu_stat(data)
