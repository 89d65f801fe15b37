"""
The cgroup's ``cpu.stat`` read in the sampler's pass instead of on the event loop.

Covers: :class:`PassCpuStatReader`, the admission limiter's
:class:`~._admission._cpu_stat.CpuStatReader` whose file is read (and parsed) in the
sampler's read thread with the other kernel files of a sample
(:meth:`~._sampler.Sampler.read_in_pass`); the limiter then takes the counters of
that pass without a read of its own on the loop. Does not cover: what the counters
mean for admission (:mod:`._admission._pressure`).

Without a pass (a custom metric source, or a sample of the limiter before any pass),
:meth:`PassCpuStatReader.read` reads the file itself, as the plain reader does.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final

from ._admission._cpu_stat import CpuStatReader

if TYPE_CHECKING:
    from ._admission._cpu_stat import CpuStat

__all__ = ("PassCpuStatReader",)

_NOT_READ: Final = object()


class PassCpuStatReader(CpuStatReader):
    """
    A :class:`CpuStatReader` whose reads happen in the sampler's pass.

    :meth:`refresh` (in the read thread) reads the counters; the next :meth:`read`
    (on the loop) takes them, once. Its descriptor is read and closed under one lock,
    so a pass in flight never reads a closed descriptor's reused number.
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid: int | None = None,
    ) -> None:
        super().__init__(proc_root=proc_root, cgroup_root=cgroup_root, pid=pid)
        self._fd_lock = threading.Lock()
        self._fresh: object = _NOT_READ

    def refresh(self) -> None:
        """Read the counters now (in the sampler's thread) for the next :meth:`read`."""
        with self._fd_lock:
            self._fresh = super().read()

    def read(self) -> CpuStat | None:
        """
        The counters of the last pass not taken yet, else read now.

        Returns:
            As :meth:`CpuStatReader.read`.
        """
        fresh, self._fresh = self._fresh, _NOT_READ
        if fresh is not _NOT_READ:
            return fresh  # type: ignore[return-value]
        with self._fd_lock:
            return super().read()

    def close(self) -> None:
        """Close the file; idempotent (waits for a pass reading it)."""
        with self._fd_lock:
            super().close()
            self._fresh = _NOT_READ
