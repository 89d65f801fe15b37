"""Tests for the cgroup cpu.stat throttling reader (_admission/_cpu_stat.py)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import pytest

from resource_supervisor._admission._cpu_stat import (
    CpuStat,
    CpuStatReader,
    parse_cpu_stat,
    throttled_ratio,
)

if TYPE_CHECKING:
    from pathlib import Path

# As the kernel writes them (v1 cpu,cpuacct on 5.x; v2 with the cpu controller on 6.x)
V1_CPU_STAT = "nr_periods 5120\nnr_throttled 312\nthrottled_time 9876543210\n"
V2_CPU_STAT = (
    "usage_usec 85311460\nuser_usec 61872630\nsystem_usec 23438830\n"
    "core_sched.force_idle_usec 0\nnr_periods 40210\nnr_throttled 1207\n"
    "throttled_usec 73456012\nnr_bursts 0\nburst_usec 0\n"
)
V2_WITHOUT_CPU_CONTROLLER = "usage_usec 85311460\nuser_usec 61872630\nsystem_usec 23438830\n"


def test_parse_v1_and_v2() -> None:
    """v1 throttled_time is nanoseconds, v2 throttled_usec microseconds."""
    assert parse_cpu_stat(V1_CPU_STAT) == CpuStat(5120, 312, 9.87654321)
    assert parse_cpu_stat(V2_CPU_STAT.encode()) == CpuStat(40210, 1207, 73.456012)
    assert parse_cpu_stat(V2_WITHOUT_CPU_CONTROLLER) is None
    assert parse_cpu_stat("garbage\nnr_periods x\n") is None
    assert parse_cpu_stat("nr_periods 3\nnr_throttled 1\n") == CpuStat(3, 1, 0.0)


def test_throttled_ratio_between_reads() -> None:
    """The share of periods throttled between two reads; NaN when unknown or reset."""
    first = CpuStat(100, 10, 1.0)
    assert throttled_ratio(first, CpuStat(200, 35, 2.0)) == pytest.approx(0.25)
    assert throttled_ratio(first, first) == 0.0
    assert math.isnan(throttled_ratio(None, first))
    assert math.isnan(throttled_ratio(first, None))
    assert math.isnan(throttled_ratio(first, CpuStat(50, 1, 0.0)))


def _lay_out(root: Path, version: str, content: str) -> tuple[str, str]:
    """A /proc and /sys/fs/cgroup tree for pid 4242 in cgroup /svc/app."""
    proc = root / "proc"
    (proc / "4242").mkdir(parents=True)
    cgroup_root = root / "sys" / "fs" / "cgroup"
    if version == "v1":
        (proc / "4242" / "cgroup").write_text(
            "4:memory:/svc/app\n2:cpu,cpuacct:/svc/app\n0::/\n", encoding="ascii"
        )
        directory = cgroup_root / "cpu,cpuacct" / "svc" / "app"
    else:
        (proc / "4242" / "cgroup").write_text("0::/svc/app\n", encoding="ascii")
        directory = cgroup_root / "svc" / "app"
        cgroup_root.mkdir(parents=True)
        (cgroup_root / "cgroup.controllers").write_text("cpu memory\n", encoding="ascii")
    directory.mkdir(parents=True)
    (directory / "cpu.stat").write_text(content, encoding="ascii")
    return str(proc), str(cgroup_root)


@pytest.mark.parametrize(("version", "content"), [("v1", V1_CPU_STAT), ("v2", V2_CPU_STAT)])
def test_reader_follows_the_process_cgroup_and_sees_new_counts(
    tmp_path: Path, version: str, content: str
) -> None:
    """The reader finds the process's CPU cgroup, keeps cpu.stat open and re-reads it."""
    proc, cgroup_root = _lay_out(tmp_path, version, content)
    reader = CpuStatReader(proc_root=proc, cgroup_root=cgroup_root, pid=4242)
    assert reader.read() is None  # not opened yet
    with reader:
        assert reader.path is not None
        assert reader.path.endswith(os.path.join("svc", "app", "cpu.stat"))
        first = reader.read()
        assert first == parse_cpu_stat(content)
        assert first is not None
        with open(reader.path, "w", encoding="ascii") as file:
            file.write(
                f"nr_periods {first.periods + 100}\nnr_throttled {first.throttled_periods + 50}\n"
            )
        assert throttled_ratio(first, reader.read()) == pytest.approx(0.5)
        reader.open()  # idempotent
    assert reader.read() is None
    reader.close()  # idempotent


def test_reader_without_cgroup_or_file_reads_none(tmp_path: Path) -> None:
    """No cgroup file, or no cpu.stat in the cgroup: reads give None, nothing raises."""
    reader = CpuStatReader(proc_root=str(tmp_path), cgroup_root=str(tmp_path), pid=4242)
    with reader:
        assert reader.path is None
        assert reader.read() is None
    proc, cgroup_root = _lay_out(tmp_path / "x", "v2", V2_CPU_STAT)
    os.remove(os.path.join(cgroup_root, "svc", "app", "cpu.stat"))
    with CpuStatReader(proc_root=proc, cgroup_root=cgroup_root, pid=4242) as missing:
        assert missing.read() is None


def test_reader_on_this_machine() -> None:
    """Against the real /sys/fs/cgroup: this process's cpu.stat parses into sane counts."""
    with CpuStatReader() as reader:
        stat = reader.read()
        if stat is None:
            pytest.skip(f"no cpu.stat with throttling counters for this process ({reader.path})")
        assert reader.path is not None
        assert stat.periods >= stat.throttled_periods >= 0
        assert stat.throttled_seconds >= 0
        again = reader.read()
        assert again is not None
        assert again.periods >= stat.periods
        assert throttled_ratio(stat, again) >= 0.0
