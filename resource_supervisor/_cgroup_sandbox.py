"""
A real memory limit for tests and benchmarks: a child memory cgroup of this process's own.

Covers: finding this process's memory cgroup (v1 memory hierarchy or cgroup2, from
``/proc/self/cgroup`` and ``/proc/self/mountinfo``), creating a uniquely named child
with a memory limit (swap pinned so it cannot hide the limit), moving processes in,
reading its OOM-kill counter and peak usage, and removing it again, also after a
kill. Never touches the hierarchy root.

Does not cover: reading limits for the supervisor (:mod:`._sources._cgroup`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("CgroupUnavailableError", "MemoryCgroup", "memory_cgroup")

CgroupVersion = Literal["cgroup_v1", "cgroup_v2"]


class CgroupUnavailableError(RuntimeError):
    """A child memory cgroup cannot be made here; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryCgroup:
    """
    A child memory cgroup created by :func:`memory_cgroup`.

    Attributes:
        version: ``"cgroup_v1"`` or ``"cgroup_v2"``.
        path: Its directory.
        parent: The directory of the cgroup it was created in (this process's own).
        limit_bytes: The memory limit it was given.
    """

    version: CgroupVersion
    path: Path
    parent: Path
    limit_bytes: int

    def add(self, pid: int) -> None:
        """Move process *pid* (and the children it starts later) into this cgroup."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """The processes in this cgroup now (empty once it is gone)."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(line) for line in text.split()]

    def kill_all(self) -> None:
        """SIGKILL every process in this cgroup (what is left of a run)."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def oom_kills(self) -> int:
        """
        How many processes the kernel's OOM killer has killed in this cgroup.

        Raises:
            LookupError: If the kernel does not count them here.
        """
        name = "memory.oom_control" if self.version == "cgroup_v1" else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise LookupError(f"no oom_kill counter in {self.path / name}")

    def usage_bytes(self) -> int:
        """Memory charged to the cgroup now (page cache included)."""
        name = "memory.usage_in_bytes" if self.version == "cgroup_v1" else "memory.current"
        return int((self.path / name).read_text())

    def peak_bytes(self) -> int | None:
        """The highest usage since creation or :meth:`reset_peak`; None where not kept."""
        name = "memory.max_usage_in_bytes" if self.version == "cgroup_v1" else "memory.peak"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def reset_peak(self) -> None:
        """Start the peak over from the current usage (where the kernel allows it)."""
        name = "memory.max_usage_in_bytes" if self.version == "cgroup_v1" else "memory.peak"
        with contextlib.suppress(OSError):
            (self.path / name).write_text("0\n")


def _own_memory_cgroup() -> tuple[CgroupVersion, Path]:
    memberships: dict[str, str] = {}
    v2_path: str | None = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2_path = path
        for controller in controllers.split(","):
            memberships[controller] = path
    mounts: list[tuple[str, str, str, set[str]]] = []  # (fstype, root, mount point, options)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        mounts.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))

    def under(root: str, mount_point: str, path: str) -> Path:
        relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
        return Path(mount_point) / relative if relative not in {"", "."} else Path(mount_point)

    if "memory" in memberships:
        for fstype, root, mount_point, options in mounts:
            if fstype == "cgroup" and "memory" in options:
                return "cgroup_v1", under(root, mount_point, memberships["memory"])
        raise CgroupUnavailableError(
            "this process is in a v1 memory cgroup, but the hierarchy is not mounted"
        )
    if v2_path is not None:
        for fstype, root, mount_point, _ in mounts:
            if fstype == "cgroup2":
                return "cgroup_v2", under(root, mount_point, v2_path)
    raise CgroupUnavailableError("no memory cgroup (neither a v1 memory hierarchy nor cgroup2)")


def _enable_v2_memory(own: Path) -> None:
    if "memory" not in (own / "cgroup.controllers").read_text().split():
        raise CgroupUnavailableError(f"the memory controller is not available in {own}")
    if "memory" not in (own / "cgroup.subtree_control").read_text().split():
        try:
            (own / "cgroup.subtree_control").write_text("+memory")
        except OSError as exc:
            raise CgroupUnavailableError(
                f"cannot enable +memory for children of {own} ({exc}); the "
                "no-internal-processes rule forbids it while this cgroup holds processes"
            ) from exc


def _create(limit_bytes: int, prefix: str) -> MemoryCgroup:
    if sys.platform != "linux" or os.geteuid() != 0:
        raise CgroupUnavailableError("creating a memory cgroup needs root on Linux")
    version, own = _own_memory_cgroup()
    if version == "cgroup_v2":
        _enable_v2_memory(own)
    path = own / f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as exc:
        raise CgroupUnavailableError(f"cannot create a memory cgroup under {own}: {exc}") from exc
    cgroup = MemoryCgroup(version, path, own, limit_bytes)
    try:
        if version == "cgroup_v1":
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            if (path / "memory.memsw.limit_in_bytes").exists():
                # memory+swap at the same value: swap cannot hide the limit
                (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
        else:
            (path / "memory.max").write_text(str(limit_bytes))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
    except OSError as exc:
        remove(cgroup)
        raise CgroupUnavailableError(f"cannot set a memory limit on {path}: {exc}") from exc
    return cgroup


def remove(cgroup: MemoryCgroup, *, timeout: float = 10.0) -> None:
    """
    Move any process left in *cgroup* to its parent, then remove it.

    Raises:
        OSError: If the kernel still refuses after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        for pid in cgroup.pids():
            with contextlib.suppress(OSError):  # it may have exited meanwhile
                (cgroup.parent / "cgroup.procs").write_text(f"{pid}\n")
        try:
            cgroup.path.rmdir()
        except FileNotFoundError:
            return
        except OSError:
            # EBUSY while a killed process is still being torn down
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        else:
            return


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int, *, prefix: str = "rs-sandbox") -> Iterator[MemoryCgroup]:
    """
    Create a child memory cgroup of this process's own, limited to *limit_bytes*.

    The cgroup is removed on the way out, also on errors; processes still in it
    are moved back to the parent first. Needs root and a writable memory
    controller (cgroup v1, or v2 with ``+memory`` delegable to a child).

    Raises:
        CgroupUnavailableError: Where it cannot be made, with the reason.
        ValueError: If *limit_bytes* is not positive.
    """
    if limit_bytes <= 0:
        raise ValueError(f"limit_bytes must be positive, got {limit_bytes}")
    cgroup = _create(limit_bytes, prefix)
    try:
        yield cgroup
    finally:
        remove(cgroup)
