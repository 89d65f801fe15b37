"""
Memory pressure stall information (PSI).

Covers: the pure parser for PSI files (``some avg10=... avg60=... avg300=...
total=...`` and the ``full`` line) and :class:`PsiReader`, which keeps the memory
PSI file open and preads it each sample. The process's own cgroup v2
``memory.pressure`` is preferred; ``<proc_root>/pressure/memory`` (system-wide) is the
fallback. Where neither can be read (kernels before 4.20, or PSI disabled), the
reader yields nothing and the sample has no PSI keys.

Does not cover: CPU or I/O pressure, or thresholds on PSI (the pressure policy,
:mod:`.._policy`). Related: :mod:`._cgroup` locates the v2 cgroup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._cgroup import locate_v2_cgroup
from ._kept_open import KeptOpen

__all__ = ("PsiMemory", "PsiReader", "parse_psi")


@dataclass(frozen=True, slots=True)
class PsiMemory:
    """Share of wall time (percent, 10 s average) that tasks stalled on memory."""

    some_avg10: float
    """At least one task stalled."""
    full_avg10: float | None
    """All non-idle tasks stalled at once; ``None`` when the file has no ``full`` line."""


def parse_psi(data: bytes | str) -> PsiMemory:
    """
    Parse a PSI file into the 10-second averages.

    Args:
        data: The file's content.

    Returns:
        The ``some`` and ``full`` ``avg10`` values.

    Raises:
        ValueError: If there is no ``some`` line with an ``avg10`` field.
    """
    text = data.decode("ascii") if isinstance(data, bytes) else data
    averages: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            name, _, value = item.partition("=")
            if name == "avg10":
                averages[kind] = float(value)
                break
    if "some" not in averages:
        raise ValueError("PSI content has no 'some avg10=' field")
    return PsiMemory(some_avg10=averages["some"], full_avg10=averages.get("full"))


class PsiReader(KeptOpen):
    """
    Kept-open reads of memory PSI: the own cgroup v2 ``memory.pressure``, else
    ``<proc_root>/pressure/memory``. Not thread-safe.
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
            pid: The process whose cgroup is read; ``None`` means this process.
        """
        self._proc_root = proc_root
        self._cgroup_root = cgroup_root
        self._pid = pid
        self._fd: int | None = None
        self._path: str | None = None

    @property
    def path(self) -> str | None:
        """The file being read, or ``None`` when PSI is unavailable (or not open)."""
        return self._path

    def open(self) -> None:
        """
        Open the first readable PSI file; idempotent. Never raises: without PSI,
        :meth:`read` returns ``None``.
        """
        if self._fd is not None:
            return
        candidates = []
        directory = locate_v2_cgroup(
            proc_root=self._proc_root, cgroup_root=self._cgroup_root, pid=self._pid
        )
        if directory is not None:
            candidates.append(os.path.join(directory, "memory.pressure"))
        candidates.append(os.path.join(self._proc_root, "pressure", "memory"))
        for path in candidates:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                # With PSI disabled at boot the file exists but reads fail (EOPNOTSUPP).
                parse_psi(os.pread(fd, 256, 0))
            except (OSError, ValueError, UnicodeDecodeError):
                os.close(fd)
                continue
            self._fd, self._path = fd, path
            return

    def close(self) -> None:
        """Close the kept-open file; idempotent."""
        fd, self._fd, self._path = self._fd, None, None
        if fd is not None:
            os.close(fd)

    def read(self) -> PsiMemory | None:
        """
        Read the current memory PSI.

        Returns:
            The averages, or ``None`` when no PSI file is open.

        Raises:
            OSError: If the kept-open file can no longer be read.
            ValueError: If its content cannot be parsed.
        """
        if self._fd is None:
            return None
        return parse_psi(os.pread(self._fd, 256, 0))
