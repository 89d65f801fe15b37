"""
Fixed CPU budgets for benchmark processes: child CPU cgroups (v1 ``cpu`` controller).

Covers: :class:`CpuCgroup`, one child cgroup created inside this process's own CPU
cgroup (from ``/proc/self/cgroup``) with a unique name, an optional CFS quota
(``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and a weight (``cpu.shares``),
processes moved into it, its throttling counters (``cpu.stat``) read, and removed
afterwards (its processes moved back first). :func:`open_cpu_cgroup` returns
``None`` with a reason where it is not permitted (no v1 ``cpu`` hierarchy, no
write access). Does not cover: memory cgroups (``tests/test_container_limit.py``)
or what the benchmark does with them (:mod:`benchmarks.admission`).

Why: on a shared machine the CPU a service gets moves with the neighbours' work,
so a capacity measured at the start of a run does not hold through it. A quota
below what the service would get anyway fixes its capacity; a weight above the
neighbours' makes sure it does get the quota when the machine is busy. The quota
is also what a container runtime sets, so the service's own throttling counters
become a real input.
"""

from __future__ import annotations

import contextlib
import os
import uuid

__all__ = ("CpuCgroup", "cpu_cgroup_parent", "open_cpu_cgroup")

_CGROUP_ROOT = "/sys/fs/cgroup"


def cpu_cgroup_parent(
    *, proc_root: str = "/proc", cgroup_root: str = _CGROUP_ROOT
) -> tuple[str | None, str]:
    """
    Return this process's v1 CPU cgroup directory, or ``None`` with the reason.
    """
    try:
        with open(os.path.join(proc_root, "self", "cgroup"), encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc}"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" not in controllers.split(","):
            continue
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            directory = os.path.join(cgroup_root, mount) + path.rstrip("/")
            if os.path.isfile(os.path.join(directory, "cpu.cfs_quota_us")):
                return directory, ""
        return None, f"the v1 cpu hierarchy of {path!r} is not mounted under {cgroup_root}"
    return None, "no v1 cpu controller in /proc/self/cgroup (cgroup v2 only?)"


class CpuCgroup:
    """
    One child CPU cgroup; use :func:`open_cpu_cgroup` to make one.

    Attributes:
        directory: Its directory under the parent's.
        parent: The parent's directory (where processes go back on :meth:`remove`).
        cpus: The quota in CPUs (``None`` = no quota).
    """

    def __init__(self, directory: str, parent: str, cpus: float | None) -> None:
        self.directory = directory
        self.parent = parent
        self.cpus = cpus

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.directory, name), "w", encoding="ascii") as f:
            f.write(value)

    def add(self, pid: int) -> None:
        """Move process *pid* (all its threads) into the cgroup."""
        self._write("cgroup.procs", str(pid))

    def throttling(self) -> tuple[int, int, float]:
        """Return ``(nr_periods, nr_throttled, throttled seconds)`` so far."""
        values: dict[str, int] = {}
        with open(os.path.join(self.directory, "cpu.stat"), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                values[key] = int(value)
        return values["nr_periods"], values["nr_throttled"], values["throttled_time"] / 1e9

    def usage_seconds(self) -> float | None:
        """CPU time used by the cgroup's processes so far (``cpuacct``), if visible."""
        name = os.path.basename(self.directory)
        for mount in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
            path = os.path.join(_CGROUP_ROOT, mount, name, "cpuacct.usage")
            with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as f:
                return int(f.read()) / 1e9
        return None

    def remove(self) -> None:
        """Move any process left back to the parent and remove the cgroup; idempotent."""
        if not os.path.isdir(self.directory):
            return
        for _ in range(50):
            try:
                with open(os.path.join(self.directory, "cgroup.procs"), encoding="ascii") as f:
                    pids = [line.strip() for line in f if line.strip()]
            except OSError:
                return
            for pid in pids:
                with (
                    contextlib.suppress(OSError),
                    open(os.path.join(self.parent, "cgroup.procs"), "w", encoding="ascii") as f,
                ):
                    f.write(pid)
            try:
                os.rmdir(self.directory)
            except OSError:
                continue
            return


def open_cpu_cgroup(
    label: str,
    *,
    cpus: float | None,
    period_us: int = 10_000,
    shares: int = 1024,
) -> tuple[CpuCgroup | None, str]:
    """
    Create a child CPU cgroup with a quota of *cpus* (per *period_us*) and *shares*.

    Returns:
        The cgroup, or ``None`` and the reason it could not be made (nothing is
        left behind then).
    """
    parent, reason = cpu_cgroup_parent()
    if parent is None:
        return None, reason
    directory = os.path.join(parent, f"rs-bench-{label}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(directory)
    except OSError as exc:
        return None, f"cannot create a cpu cgroup under {parent}: {exc}"
    group = CpuCgroup(directory, parent, cpus)
    try:
        group._write("cpu.shares", str(shares))
        if cpus is not None:
            group._write("cpu.cfs_period_us", str(period_us))
            group._write("cpu.cfs_quota_us", str(max(1000, round(cpus * period_us))))
    except OSError as exc:
        group.remove()
        return None, f"cannot set the cpu quota in {directory}: {exc}"
    return group, ""
