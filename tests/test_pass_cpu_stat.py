"""
Tests of the cgroup cpu.stat read in the sampler's pass (_pass_cpu_stat): a real
file laid out like a v1 cgroup, the real sampler and its thread.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import anyio

from resource_supervisor import Supervisor
from resource_supervisor._admission._cpu_stat import CpuStat, CpuStatReader
from resource_supervisor._pass_cpu_stat import PassCpuStatReader
from resource_supervisor._sampler import Sampler

from ._settings import quiet

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

GUARD = 30.0  # seconds; a hang guard only


def _lay_out(root: Path, periods: int) -> tuple[str, str, Path]:
    """A /proc and /sys/fs/cgroup tree (v1) for pid 4242 in cgroup /svc/app."""
    proc = root / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text("2:cpu,cpuacct:/svc/app\n", encoding="ascii")
    directory = root / "sys" / "fs" / "cgroup" / "cpu,cpuacct" / "svc" / "app"
    directory.mkdir(parents=True)
    stat = directory / "cpu.stat"
    _write(stat, periods)
    return str(proc), str(root / "sys" / "fs" / "cgroup"), stat


def _write(stat: Path, periods: int) -> None:
    stat.write_text(
        f"nr_periods {periods}\nnr_throttled 1\nthrottled_time 2000000000\n", encoding="ascii"
    )


def test_a_read_takes_the_pass_once_then_reads_itself(tmp_path: Path) -> None:
    """What the pass read is taken by the next read only; without a pass, read reads."""
    proc, cgroup, stat = _lay_out(tmp_path, periods=10)
    reader = PassCpuStatReader(proc_root=proc, cgroup_root=cgroup, pid=4242)
    reader.open()
    try:
        assert reader.read() == CpuStat(10, 1, 2.0)  # no pass yet: its own read
        reader.refresh()
        _write(stat, 20)
        assert reader.read() == CpuStat(10, 1, 2.0)  # the pass's figures
        assert reader.read() == CpuStat(20, 1, 2.0)  # taken: reads the file again
    finally:
        reader.close()
    reader.refresh()  # closed: nothing to read, no error
    assert reader.read() is None


async def test_the_supervisor_reads_cpu_stat_in_the_sampler_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every cpu.stat read of a supervised sample happens in the sampler's thread, on a
    timer and on demand: the admission limiter reads nothing on the loop."""
    threads: list[str] = []
    read = CpuStatReader.read

    def spy(self: CpuStatReader) -> CpuStat | None:
        threads.append(threading.current_thread().name)
        return read(self)

    monkeypatch.setattr(CpuStatReader, "read", spy)
    async with Supervisor(quiet(monitoring_enabled=True, monitoring_interval=0.05)) as sup:
        assert isinstance(sup._source, Sampler)
        threads.clear()  # the limiter's baseline at open, before any pass
        with anyio.fail_after(GUARD):
            while len(threads) < 3:  # noqa: ASYNC110 - counted in the read thread
                await anyio.sleep(0.02)
            await sup.update_metrics()
    assert threads
    assert set(threads) == {"resource-supervisor sampler"}, threads
