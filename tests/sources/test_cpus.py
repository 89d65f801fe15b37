"""Tests for usable_cpu_count: affinity capped by the cgroup CPU quota."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from resource_supervisor._sources._cgroup import read_cpu_quota
from resource_supervisor._sources._cpus import usable_cpu_count

FIXTURES = Path(__file__).parents[1] / "fixtures"


def affinity() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0))


def own_tree(tmp_path: Path, layout: str) -> tuple[str, str]:
    """Copy a cgroup layout so that it describes this process (its real pid)."""
    shutil.copytree(FIXTURES / "cgroup" / layout, tmp_path / layout)
    proc = tmp_path / layout / "proc"
    os.rename(proc / "4242", proc / str(os.getpid()))
    return str(proc), str(tmp_path / layout / "sys/fs/cgroup")


def set_quota(cgroup_root: str, text: str) -> None:
    """Rewrite the service's cpu.max in the v2 layout."""
    Path(cgroup_root, "system.slice/app.service/cpu.max").write_text(text)


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_quota_of_one_and_a_half_cpus_rounds_up(tmp_path: Path, layout: str) -> None:
    """A 1.5 CPU quota allows ceil(1.5) = 2 CPUs, never more than affinity allows."""
    proc, cgroup = own_tree(tmp_path, layout)
    assert usable_cpu_count(proc_root=proc, cgroup_root=cgroup) == min(affinity(), 2)


def test_quota_below_affinity_caps_the_count(tmp_path: Path) -> None:
    """Half a CPU of quota caps a multi-CPU affinity at 1."""
    proc, cgroup = own_tree(tmp_path, "v2")
    set_quota(cgroup, "50000 100000\n")
    assert usable_cpu_count(proc_root=proc, cgroup_root=cgroup) == 1


def test_quota_above_affinity_does_not_raise_the_count(tmp_path: Path) -> None:
    """A quota of 64 CPUs leaves the affinity count in charge."""
    proc, cgroup = own_tree(tmp_path, "v2")
    set_quota(cgroup, "6400000 100000\n")
    assert usable_cpu_count(proc_root=proc, cgroup_root=cgroup) == affinity()


def test_tiny_quota_still_gives_one_cpu(tmp_path: Path) -> None:
    """However small the quota, at least one CPU is usable."""
    proc, cgroup = own_tree(tmp_path, "v2")
    set_quota(cgroup, "1000 100000\n")
    assert usable_cpu_count(proc_root=proc, cgroup_root=cgroup) == 1


def test_no_quota_means_affinity(tmp_path: Path) -> None:
    """Without a quota ('max' everywhere), the count is the affinity mask's size."""
    proc, cgroup = own_tree(tmp_path, "unlimited")
    assert usable_cpu_count(proc_root=proc, cgroup_root=cgroup) == affinity()


def test_unknown_pid_falls_back_to_cpu_count(tmp_path: Path) -> None:
    """A pid with no affinity to read (no such process) counts os.cpu_count() CPUs."""
    count = usable_cpu_count(proc_root=str(tmp_path), cgroup_root=str(tmp_path), pid=999_999_999)
    assert count == (os.cpu_count() or 1)


def test_this_machine() -> None:
    """On the real files: affinity capped by the real quota (if any), at least 1."""
    quota = read_cpu_quota()
    expected = affinity() if quota is None else min(affinity(), math.ceil(quota))
    assert usable_cpu_count() == max(1, expected)
