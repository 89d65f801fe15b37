"""The admission benchmark's CPU budgets (benchmarks/_cpu_cgroup.py) on a real cgroup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks._cpu_cgroup import cpu_cgroup_parent, open_cpu_cgroup

BUSY = "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass\n"


def test_parent_is_none_with_a_reason_without_a_v1_cpu_hierarchy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A process in no v1 cpu cgroup gets None and a reason, never an exception."""
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text("0::/\n")
    parent, reason = cpu_cgroup_parent(proc_root=str(tmp_path), cgroup_root=str(tmp_path))
    assert parent is None
    assert "v1 cpu" in reason


@pytest.mark.timeout(30)
def test_quota_throttles_a_busy_child_and_the_cgroup_is_removed() -> None:
    """A busy process moved into a 0.1 CPU cgroup is throttled; remove() leaves nothing."""
    group, reason = open_cpu_cgroup("test", cpus=0.1, shares=1024)
    if group is None:
        pytest.skip(f"cannot create a cpu cgroup here: {reason}")
    try:
        with open(os.path.join(group.directory, "cpu.cfs_quota_us"), encoding="ascii") as f:
            assert int(f.read()) == 1000
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read(1)\n" + BUSY], stdin=subprocess.PIPE
        )
        try:
            group.add(child.pid)
            assert child.stdin is not None
            child.stdin.write(b"x")
            child.stdin.close()
            assert child.wait(timeout=20) == 0
        finally:
            child.kill()
            child.wait()
        periods, throttled, seconds = group.throttling()
        assert periods > 0
        assert throttled > 0
        assert seconds > 0
    finally:
        group.remove()
    assert not os.path.exists(group.directory)
    group.remove()  # idempotent
