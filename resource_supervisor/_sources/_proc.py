"""
Cheap readers for the ``/proc`` files that every sample needs.

Covers: the pure parsers for ``/proc/meminfo``, the ``cpu`` line of ``/proc/stat``,
``/proc/<pid>/stat`` and ``/proc/<pid>/statm``; :func:`pread_all`, the kept-open file
read shared by every source; and :class:`ProcReader`, which opens those files once and
``os.pread``\\ s them on each sample (a pread of a kept-open fd costs 1-2 us, an
``open().read()`` 11-13 us, see ``BASELINES.md``). Where ``/proc`` is absent (not
Linux) the reader falls back to psutil.

Does not cover: cgroup limits and usage (:mod:`._cgroup`), pressure stall information
(:mod:`._psi`), CPU counts (:mod:`._cpus`), or turning figures into percentages over
time (:mod:`.._sampler`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

import psutil

from ._kept_open import KeptOpen

__all__ = (
    "CpuTimes",
    "HostMemory",
    "ProcReader",
    "ProcessStat",
    "parse_meminfo",
    "parse_pid_stat",
    "parse_stat_cpu",
    "parse_statm_rss_pages",
    "pread_all",
)

_CLOCK_TICKS: Final = "SC_CLK_TCK"
#: First pread size for small kernel files; grown by pread_all when a read fills it.
_SMALL_READ: Final = 4096


def pread_all(fd: int, size: int = _SMALL_READ) -> bytes:
    """
    Read a whole kept-open file from offset 0 with as few ``pread`` calls as possible.

    Kernel files are generated anew by a read at offset 0, so this returns fresh
    content each time. A read that fills the buffer may have been cut short, so it is
    repeated with a buffer twice as large.

    Args:
        fd: A file descriptor opened for reading.
        size: The first buffer size in bytes.

    Returns:
        The file's content.

    Raises:
        OSError: If the read fails (the file vanished, or the kernel refuses it).
    """
    while True:
        data = os.pread(fd, size, 0)
        if len(data) < size:
            return data
        size *= 2


@dataclass(frozen=True, slots=True)
class HostMemory:
    """Host memory figures from ``/proc/meminfo``, in bytes."""

    total_bytes: int
    available_bytes: int

    @property
    def used_bytes(self) -> int:
        """``total - available``, as psutil counts ``virtual_memory().percent``."""
        return max(0, self.total_bytes - self.available_bytes)

    @property
    def percent(self) -> float:
        """Used memory as a percent of the total (0.0 when the total is unknown)."""
        if self.total_bytes <= 0:
            return 0.0
        return self.used_bytes / self.total_bytes * 100.0


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """System-wide CPU time from the ``cpu`` line of ``/proc/stat``, in clock ticks."""

    busy: int
    total: int


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """What one sample needs from ``/proc/<pid>/stat``."""

    cpu_ticks: int
    threads: int


def _meminfo_kib(data: bytes, key: bytes) -> int | None:
    start = data.find(key)
    if start < 0:
        return None
    end = data.find(b"\n", start)
    fields = data[start + len(key) : end if end >= 0 else len(data)].split()
    return int(fields[0]) if fields else None


def parse_meminfo(data: bytes) -> HostMemory:
    """
    Parse ``/proc/meminfo`` content into total and available memory.

    Kernels older than 3.14 lack ``MemAvailable``; it is then estimated as
    ``MemFree + Buffers + Cached`` (the figure psutil uses there too).

    Args:
        data: The file's bytes.

    Returns:
        The host's memory figures in bytes.

    Raises:
        ValueError: If ``MemTotal`` is missing or a figure is not a number.
    """
    total = _meminfo_kib(data, b"MemTotal:")
    if total is None:
        raise ValueError("MemTotal missing from meminfo")
    available = _meminfo_kib(data, b"MemAvailable:")
    if available is None:
        available = sum(
            _meminfo_kib(data, key) or 0 for key in (b"MemFree:", b"Buffers:", b"Cached:")
        )
    return HostMemory(total_bytes=total * 1024, available_bytes=available * 1024)


def parse_stat_cpu(data: bytes) -> CpuTimes:
    """
    Parse the aggregate ``cpu`` line of ``/proc/stat``.

    Columns are user, nice, system, idle, iowait, irq, softirq, steal, guest,
    guest_nice. Guest time is already counted in user and nice, so it is left out of
    the total; idle and iowait are the idle part (as psutil ``cpu_percent`` counts).

    Args:
        data: The file's bytes (only the first line is needed).

    Returns:
        Busy and total ticks.

    Raises:
        ValueError: If the first line is not the ``cpu`` line.
    """
    end = data.find(b"\n")
    fields = data[: end if end >= 0 else len(data)].split()
    if len(fields) < 5 or fields[0] != b"cpu":
        raise ValueError("first line of /proc/stat is not the cpu line")
    ticks = [int(value) for value in fields[1:9]]
    total = sum(ticks)
    idle = ticks[3] + ticks[4]
    return CpuTimes(busy=total - idle, total=total)


def parse_pid_stat(data: bytes) -> ProcessStat:
    """
    Parse ``/proc/<pid>/stat``: user + system CPU ticks and the thread count.

    The command name (field 2) may hold spaces and parentheses, so fields are counted
    from the last ``)``.

    Args:
        data: The file's bytes.

    Returns:
        CPU ticks (utime + stime) and threads.

    Raises:
        ValueError: If the content is not a stat line.
    """
    close = data.rfind(b")")
    if close < 0:
        raise ValueError("not a /proc/<pid>/stat line")
    # After ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime(14) stime(15) cutime cstime priority nice num_threads(20).
    rest = data[close + 1 :].split()
    if len(rest) < 18:
        raise ValueError("/proc/<pid>/stat line is too short")
    return ProcessStat(cpu_ticks=int(rest[11]) + int(rest[12]), threads=int(rest[17]))


def parse_statm_rss_pages(data: bytes) -> int:
    """
    Parse ``/proc/<pid>/statm``: the resident set size in pages (second field).

    Args:
        data: The file's bytes.

    Returns:
        Resident pages.

    Raises:
        ValueError: If the content has fewer than two fields.
    """
    fields = data.split(None, 2)
    if len(fields) < 2:
        raise ValueError("/proc/<pid>/statm is too short")
    return int(fields[1])


class ProcReader(KeptOpen):
    """
    Kept-open reads of ``/proc`` for one process, psutil where a file is absent.

    :meth:`open` opens ``meminfo``, ``stat``, ``<pid>/stat`` and ``<pid>/statm`` under
    *proc_root*; each ``read_*`` call is then one ``os.pread``. A file that cannot be
    opened is read through psutil instead (for a host without ``/proc``). The reader
    is synchronous and not thread-safe; the sampler calls it from the event loop.
    """

    def __init__(self, *, proc_root: str = "/proc", pid: int | None = None) -> None:
        """
        Prepare a reader; nothing is opened until :meth:`open`.

        Args:
            proc_root: Where procfs is mounted (a directory laid out like it in tests).
            pid: The process to read; ``None`` means this process.
        """
        self._root = proc_root
        self._pid = os.getpid() if pid is None else pid
        self._fds: dict[str, int] = {}
        self._fd_dir = os.path.join(proc_root, str(self._pid), "fd")
        self._fd_dir_counts_by_size = False
        self._page_size = 4096
        self._clock_ticks = 100
        self._process: psutil.Process | None = None

    @property
    def pid(self) -> int:
        """The process this reader reads."""
        return self._pid

    @property
    def clock_ticks(self) -> int:
        """Kernel clock ticks per second (``SC_CLK_TCK``), read once at open."""
        return self._clock_ticks

    def open(self) -> None:
        """
        Open the kept-open files; idempotent. Files that cannot be opened are skipped.
        """
        if self._fds:
            return
        self._page_size = _sysconf("SC_PAGE_SIZE", 4096)
        self._clock_ticks = _sysconf(_CLOCK_TICKS, 100)
        pid_dir = os.path.join(self._root, str(self._pid))
        for key, path in (
            ("meminfo", os.path.join(self._root, "meminfo")),
            ("stat", os.path.join(self._root, "stat")),
            ("pid_stat", os.path.join(pid_dir, "stat")),
            ("pid_statm", os.path.join(pid_dir, "statm")),
        ):
            try:
                self._fds[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
        self._fd_dir_counts_by_size = _counts_fds_by_size(self._fd_dir)

    def close(self) -> None:
        """Close every kept-open file; idempotent."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _psutil_process(self) -> psutil.Process:
        if self._process is None:
            self._process = psutil.Process(self._pid)
        return self._process

    def read_host_memory(self) -> HostMemory:
        """
        Return host total and available memory.

        Raises:
            OSError: If neither ``meminfo`` nor psutil can be read.
            ValueError: If ``meminfo`` cannot be parsed.
        """
        fd = self._fds.get("meminfo")
        if fd is None:
            vm = psutil.virtual_memory()
            return HostMemory(total_bytes=vm.total, available_bytes=vm.available)
        return parse_meminfo(pread_all(fd))

    def read_cpu_times(self) -> CpuTimes:
        """
        Return system-wide busy and total CPU ticks.

        Raises:
            OSError: If the file cannot be read.
            ValueError: If it cannot be parsed.
        """
        fd = self._fds.get("stat")
        if fd is None:
            times = psutil.cpu_times()
            idle = times.idle + getattr(times, "iowait", 0.0)
            total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
            ticks = self._clock_ticks
            return CpuTimes(busy=round((total - idle) * ticks), total=round(total * ticks))
        # Only the first line is needed; the kernel still formats the whole file.
        return parse_stat_cpu(os.pread(fd, 512, 0))

    def read_process_stat(self) -> ProcessStat:
        """
        Return this process's CPU ticks and thread count.

        Raises:
            OSError: If the file cannot be read (the process is gone).
            ValueError: If it cannot be parsed.
        """
        fd = self._fds.get("pid_stat")
        if fd is None:
            try:
                proc = self._psutil_process()
                times = proc.cpu_times()
                threads = proc.num_threads()
            except psutil.Error as exc:
                raise OSError(f"cannot read process {self._pid}") from exc
            ticks = round((times.user + times.system) * self._clock_ticks)
            return ProcessStat(cpu_ticks=ticks, threads=threads)
        return parse_pid_stat(pread_all(fd, 1024))

    def read_rss_bytes(self) -> int:
        """
        Return this process's resident set size in bytes.

        Raises:
            OSError: If the file cannot be read (the process is gone).
            ValueError: If it cannot be parsed.
        """
        fd = self._fds.get("pid_statm")
        if fd is None:
            try:
                return int(self._psutil_process().memory_info().rss)
            except psutil.Error as exc:
                raise OSError(f"cannot read process {self._pid}") from exc
        return parse_statm_rss_pages(os.pread(fd, 256, 0)) * self._page_size

    def read_fd_count(self) -> int:
        """
        Return how many file descriptors the process has open.

        On procfs since Linux 6.2 the size of ``/proc/<pid>/fd`` is that count (one
        ``stat``, no listing); otherwise the directory is listed.

        Raises:
            OSError: If the directory cannot be read (the process is gone).
        """
        if self._fd_dir_counts_by_size:
            return os.stat(self._fd_dir).st_size
        try:
            return len(os.listdir(self._fd_dir))
        except FileNotFoundError:
            if os.path.isdir(self._root):
                raise
        try:
            return int(self._psutil_process().num_fds())
        except (psutil.Error, AttributeError) as exc:  # AttributeError: no num_fds on Windows
            raise OSError(f"cannot count fds of process {self._pid}") from exc


def _sysconf(name: str, default: int) -> int:
    try:
        value = os.sysconf(name)
    except (ValueError, OSError):
        return default
    return value if value > 0 else default


def _counts_fds_by_size(fd_dir: str) -> bool:
    """
    Tell whether *fd_dir* is a procfs fd directory whose size is its entry count.

    Only procfs does that (Linux 6.2+); any other directory (a test tree) reports a
    block size, so the directory must live on the same device as the real ``/proc``
    and report a non-zero size.
    """
    try:
        info = os.stat(fd_dir)
        return info.st_dev == os.stat("/proc").st_dev and info.st_size > 0
    except OSError:
        return False
