"""Tests for the cgroup v1/v2 parsers, locating a cgroup, and the kept-open memory reader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._sources._cgroup import (
    UNLIMITED_THRESHOLD_BYTES,
    CgroupMemory,
    CgroupMemoryReader,
    effective_memory,
    locate_cgroup,
    locate_v2_cgroup,
    parse_cfs_quota,
    parse_cpu_max,
    parse_memory_limit,
    parse_memory_stat,
    parse_proc_cgroup,
    read_cpu_quota,
)
from resource_supervisor._sources._proc import HostMemory

FIXTURES = Path(__file__).parents[1] / "fixtures"
PID = 4242
MIB = 1024 * 1024
GIB = 1024 * MIB
HOST = HostMemory(total_bytes=16 * GIB, available_bytes=12 * GIB)


def roots(layout: str) -> tuple[str, str]:
    """Return (proc_root, cgroup_root) of a checked-in layout."""
    base = FIXTURES / "cgroup" / layout
    return str(base / "proc"), str(base / "sys" / "fs" / "cgroup")


def copy_layout(layout: str, tmp_path: Path) -> tuple[Path, Path]:
    """Copy a layout to tmp_path for tests that change files; return its roots."""
    shutil.copytree(FIXTURES / "cgroup" / layout, tmp_path / layout)
    return tmp_path / layout / "proc", tmp_path / layout / "sys" / "fs" / "cgroup"


def rewrite(path: Path, text: str) -> None:
    """Rewrite a file in place (same inode), as the kernel's files change."""
    with open(path, "r+") as file:
        file.write(text)
        file.truncate()


# -- /proc/<pid>/cgroup --------------------------------------------------------------


def test_proc_cgroup_of_this_machine_kind_gives_v1_and_v2_paths() -> None:
    """v1 lines map each controller to its path; 0:: is v2; named hierarchies are ignored."""
    text = (FIXTURES / "proc" / str(PID) / "cgroup").read_text()
    paths = parse_proc_cgroup(text)
    assert paths.v2 == "/"
    assert paths.v1["memory"].startswith("/process_api/")
    assert paths.v1["cpu"] == "/"
    assert not any(name.startswith("name=") for name in paths.v1)


def test_proc_cgroup_splits_joint_controllers_and_skips_malformed_lines() -> None:
    """'cpu,cpuacct' gives both controllers the path; lines without two colons are skipped."""
    paths = parse_proc_cgroup("garbage\n2:cpu,cpuacct:/a:b\n0::/x/y\n")
    assert paths.v1 == {"cpu": "/a:b", "cpuacct": "/a:b"}
    assert paths.v2 == "/x/y"


# -- limits, stat, cpu quota ---------------------------------------------------------


def test_memory_limit_sentinels_mean_unlimited() -> None:
    """'max', the v1 huge sentinel and negative values mean no limit."""
    assert parse_memory_limit("max\n") is None
    assert parse_memory_limit(b"max\n") is None
    assert parse_memory_limit("9223372036854771712\n") is None
    assert parse_memory_limit("-1") is None
    assert parse_memory_limit(b"536870912\n") == 512 * MIB
    with pytest.raises(ValueError, match="invalid literal"):
        parse_memory_limit("lots")


@given(st.integers(0, 2**64))
def test_memory_limit_round_trips(limit: int) -> None:
    """Any written limit below 2**60 parses back to itself; at or above it, to unlimited."""
    expected = limit if limit < UNLIMITED_THRESHOLD_BYTES else None
    assert parse_memory_limit(f"{limit}\n") == expected
    assert parse_memory_limit(f"{limit}\n".encode()) == expected


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True), st.integers(0, 2**63), min_size=1
    )
)
def test_memory_stat_round_trips(counters: dict[str, int]) -> None:
    """Every counter written as 'key value' lines is found again, whatever its position."""
    data = "".join(f"{key} {value}\n" for key, value in counters.items()).encode()
    for key, value in counters.items():
        assert parse_memory_stat(data, key) == value
    assert parse_memory_stat(data, "Z_absent") is None


def test_memory_stat_does_not_confuse_total_and_local_counters() -> None:
    """v1 has inactive_file and total_inactive_file; each key finds its own line."""
    data = (FIXTURES / "cgroup/v1/sys/fs/cgroup/memory/process_api/abc/memory.stat").read_bytes()
    data = data.replace(b"\ninactive_file 268435456", b"\ninactive_file 4096")
    assert parse_memory_stat(data, "inactive_file") == 4096
    assert parse_memory_stat(data, "total_inactive_file") == 256 * MIB
    assert parse_memory_stat(b"file_x 5\n", "file") is None


@given(quota=st.one_of(st.none(), st.integers(1, 10**9)), period=st.integers(1, 10**7))
def test_cpu_max_round_trips(quota: int | None, period: int) -> None:
    """cpu.max '<quota|max> <period>' parses back to the quota and period written."""
    text = f"{'max' if quota is None else quota} {period}\n"
    assert parse_cpu_max(text) == (quota, period)


def test_cpu_max_edge_cases() -> None:
    """A lone quota uses the default period; a bad period or shape is an error."""
    assert parse_cpu_max("max") == (None, 100_000)
    assert parse_cpu_max("50000") == (50_000, 100_000)
    with pytest.raises(ValueError, match="positive"):
        parse_cpu_max("max 0")
    with pytest.raises(ValueError, match="malformed"):
        parse_cpu_max("1 2 3")


def test_cfs_quota_minus_one_means_no_quota() -> None:
    """v1 cpu.cfs_quota_us of -1 is no quota; a positive one is returned with the period."""
    assert parse_cfs_quota("-1\n", "100000\n") == (None, 100_000)
    assert parse_cfs_quota("150000\n", "100000\n") == (150_000, 100_000)
    with pytest.raises(ValueError, match="positive"):
        parse_cfs_quota("1", "0")


# -- effective memory (pure) ---------------------------------------------------------


def test_effective_memory_without_a_limit_uses_host_figures() -> None:
    """No cgroup, or one without a limit, gives MemTotal - MemAvailable of MemTotal."""
    for cgroup in (None, CgroupMemory("cgroup_v2", GIB, 0, None)):
        figures = effective_memory(HOST, cgroup)
        assert (figures.used_bytes, figures.limit_bytes) == (4 * GIB, 16 * GIB)
        assert figures.source == "host"
        assert figures.cgroup_limit_bytes is None
        assert figures.percent == 25.0


def test_effective_memory_ignores_a_limit_above_host_memory() -> None:
    """A cgroup limit larger than the host can never bite, so host figures apply."""
    figures = effective_memory(HOST, CgroupMemory("cgroup_v1", GIB, 0, 32 * GIB))
    assert figures.source == "host"
    assert figures.limit_bytes == 16 * GIB


@given(
    usage=st.integers(0, 64 * GIB),
    inactive=st.integers(0, 64 * GIB),
    limit=st.integers(1, 64 * GIB),
    version=st.sampled_from(["cgroup_v1", "cgroup_v2"]),
)
def test_effective_limit_is_the_smallest(
    usage: int, inactive: int, limit: int, version: str
) -> None:
    """The effective limit is min(host, cgroup); under a cgroup limit, used is the working set."""
    assert version in ("cgroup_v1", "cgroup_v2")
    cgroup = CgroupMemory(version, usage, inactive, limit)  # type: ignore[arg-type]
    figures = effective_memory(HOST, cgroup)
    assert figures.limit_bytes == min(HOST.total_bytes, limit)
    if limit <= HOST.total_bytes:
        assert figures.source == version
        assert figures.used_bytes == max(0, usage - inactive)
        assert figures.cgroup_limit_bytes == limit
    else:
        assert figures.used_bytes == HOST.used_bytes
    assert figures.percent == pytest.approx(figures.used_bytes / figures.limit_bytes * 100)


# -- locating -------------------------------------------------------------------------


def test_locate_v1_memory_and_cpu() -> None:
    """v1 uses <root>/memory/<path> and <root>/cpu,cpuacct/<path>, with ancestors to the mount."""
    proc, cgroup = roots("v1")
    memory = locate_cgroup("memory", proc_root=proc, cgroup_root=cgroup, pid=PID)
    assert memory is not None
    assert memory.version == "cgroup_v1"
    assert memory.directory == os.path.join(cgroup, "memory", "process_api", "abc")
    assert memory.chain == (
        memory.directory,
        os.path.join(cgroup, "memory", "process_api"),
        os.path.join(cgroup, "memory"),
    )
    cpu = locate_cgroup("cpu", proc_root=proc, cgroup_root=cgroup, pid=PID)
    assert cpu is not None
    assert cpu.directory == os.path.join(cgroup, "cpu,cpuacct", "process_api", "abc")


def test_locate_v2_at_the_root() -> None:
    """Unified layout: <root>/<path> from the 0:: line."""
    proc, cgroup = roots("v2")
    location = locate_cgroup("memory", proc_root=proc, cgroup_root=cgroup, pid=PID)
    assert location is not None
    assert location.version == "cgroup_v2"
    assert location.directory == os.path.join(cgroup, "system.slice", "app.service")
    assert location.chain[-1] == cgroup
    assert len(location.chain) == 3


def test_locate_hybrid_v2_under_unified(tmp_path: Path) -> None:
    """Hybrid layout: without a v1 memory line, v2 is found at <root>/unified."""
    proc, cgroup = copy_layout("v1", tmp_path)
    rewrite(proc / str(PID) / "cgroup", "1:cpu:/\n0::/\n")
    location = locate_cgroup("memory", proc_root=str(proc), cgroup_root=str(cgroup), pid=PID)
    assert location is not None
    assert location.version == "cgroup_v2"
    assert location.directory == str(cgroup / "unified")
    assert locate_v2_cgroup(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) == str(
        cgroup / "unified"
    )
    # The unified root has no memory.current: no usable memory cgroup, no error.
    with CgroupMemoryReader(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as reader:
        assert reader.location is None
        assert reader.read() is None
        assert reader.read_limit() is None


def test_locate_falls_back_to_the_mount_root_in_a_container(tmp_path: Path) -> None:
    """A path from /proc/<pid>/cgroup that is not under the mount means the mount root."""
    proc, cgroup = copy_layout("v2", tmp_path)
    rewrite(proc / str(PID) / "cgroup", "0::/docker/0123456789abcdef\n")
    shutil.copy(cgroup / "system.slice/app.service/memory.max", cgroup / "memory.max")
    shutil.copy(cgroup / "system.slice/app.service/memory.current", cgroup / "memory.current")
    location = locate_cgroup("memory", proc_root=str(proc), cgroup_root=str(cgroup), pid=PID)
    assert location is not None
    assert (location.directory, location.chain) == (str(cgroup), (str(cgroup),))
    with CgroupMemoryReader(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as reader:
        memory = reader.read()
    assert memory is not None
    assert memory.limit_bytes == 512 * MIB


def test_locate_without_cgroup_file_or_mount_is_none(tmp_path: Path) -> None:
    """No /proc/<pid>/cgroup, or no mount for its hierarchies, gives None rather than an error."""
    proc, cgroup = roots("v2")
    assert locate_cgroup("memory", proc_root=str(tmp_path), cgroup_root=cgroup, pid=PID) is None
    assert locate_cgroup("memory", proc_root=proc, cgroup_root=str(tmp_path), pid=PID) is None
    assert locate_v2_cgroup(proc_root=proc, cgroup_root=str(tmp_path), pid=PID) is None
    assert locate_v2_cgroup(proc_root=str(tmp_path), cgroup_root=cgroup, pid=PID) is None


# -- the kept-open reader ------------------------------------------------------------


def test_reader_v1_takes_the_smallest_ancestor_limit_and_working_set() -> None:
    """v1: a 2 GiB parent limit beats the 4 GiB own one; used = usage - total_inactive_file."""
    proc, cgroup = roots("v1")
    with CgroupMemoryReader(proc_root=proc, cgroup_root=cgroup, pid=PID) as reader:
        memory = reader.read()
    assert memory == CgroupMemory("cgroup_v1", GIB, 256 * MIB, 2 * GIB)
    assert memory.working_set_bytes == 768 * MIB


def test_reader_v2_reads_memory_max_current_and_inactive_file() -> None:
    """v2: memory.max of the service, memory.current minus memory.stat inactive_file."""
    proc, cgroup = roots("v2")
    with CgroupMemoryReader(proc_root=proc, cgroup_root=cgroup, pid=PID) as reader:
        memory = reader.read()
    assert memory == CgroupMemory("cgroup_v2", 256 * MIB, 64 * MIB, 512 * MIB)
    assert memory.working_set_bytes == 192 * MIB


def test_reader_unlimited_has_no_limit() -> None:
    """'max' at every level reads as no limit, with usage still available."""
    proc, cgroup = roots("unlimited")
    with CgroupMemoryReader(proc_root=proc, cgroup_root=cgroup, pid=PID) as reader:
        assert reader.read_limit() is None
        memory = reader.read()
    assert memory is not None
    assert memory.limit_bytes is None
    assert memory.working_set_bytes == 512 * MIB


def test_reader_sees_a_limit_changed_at_runtime(tmp_path: Path) -> None:
    """Limits are re-read on every call: a rewritten memory.max shows up at once."""
    proc, cgroup = copy_layout("v2", tmp_path)
    limit_file = cgroup / "system.slice/app.service/memory.max"
    with CgroupMemoryReader(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as reader:
        assert reader.read_limit() == 512 * MIB
        rewrite(limit_file, "1073741824\n")
        assert reader.read_limit() == GIB
        rewrite(cgroup / "system.slice/memory.max", "268435456\n")
        assert reader.read_limit() == 256 * MIB
        rewrite(cgroup / "system.slice/memory.max", "max\n")
        rewrite(limit_file, "max\n")
        assert reader.read_limit() is None


def test_reader_without_memory_stat_counts_no_inactive_cache(tmp_path: Path) -> None:
    """A missing memory.stat is not an error: usage is taken as the working set."""
    proc, cgroup = copy_layout("v2", tmp_path)
    (cgroup / "system.slice/app.service/memory.stat").unlink()
    with CgroupMemoryReader(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as reader:
        memory = reader.read()
    assert memory is not None
    assert memory.working_set_bytes == 256 * MIB


def test_reader_close_is_idempotent_and_releases_fds() -> None:
    """close() releases every kept-open fd, and a second close() is harmless."""
    proc, cgroup = roots("v1")
    before = len(os.listdir("/proc/self/fd"))
    reader = CgroupMemoryReader(proc_root=proc, cgroup_root=cgroup, pid=PID)
    reader.open()
    reader.open()
    # usage + stat + the limit of the cgroup and its two ancestors.
    assert len(os.listdir("/proc/self/fd")) == before + 5
    reader.close()
    reader.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert reader.read() is None


@pytest.mark.skipif(not os.path.isfile("/proc/self/cgroup"), reason="needs Linux cgroups")
def test_reader_on_this_machine() -> None:
    """The real cgroup is found and read; its usage matches the usage file read directly."""
    location = locate_cgroup("memory")
    if location is None:
        pytest.skip("no memory cgroup visible here")
    with CgroupMemoryReader() as reader:
        memory = reader.read()
    if memory is None:
        pytest.skip("memory controller has no usage file here")
    assert memory.usage_bytes > 0
    assert 0 <= memory.working_set_bytes <= memory.usage_bytes
    name = "memory.limit_in_bytes" if memory.version == "cgroup_v1" else "memory.max"
    own = parse_memory_limit(Path(location.directory, name).read_text())
    if own is not None:
        assert memory.limit_bytes is not None
        assert memory.limit_bytes <= own
    else:
        # e.g. the v1 sentinel 9223372036854771712 on this machine kind
        assert memory.limit_bytes is None or memory.limit_bytes < UNLIMITED_THRESHOLD_BYTES


# -- CPU quota -----------------------------------------------------------------------


def test_cpu_quota_v1_and_v2_fixtures() -> None:
    """150000/100000 us is 1.5 CPUs in both the v1 cfs files and the v2 cpu.max."""
    for layout in ("v1", "v2"):
        proc, cgroup = roots(layout)
        assert read_cpu_quota(proc_root=proc, cgroup_root=cgroup, pid=PID) == 1.5
    proc, cgroup = roots("unlimited")
    assert read_cpu_quota(proc_root=proc, cgroup_root=cgroup, pid=PID) is None


def test_cpu_quota_takes_the_smallest_ancestor_and_skips_bad_files(tmp_path: Path) -> None:
    """A tighter parent quota wins; malformed or missing files count as no quota."""
    proc, cgroup = copy_layout("v2", tmp_path)
    rewrite(cgroup / "system.slice/cpu.max", "50000 100000\n")
    assert read_cpu_quota(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) == 0.5
    rewrite(cgroup / "system.slice/cpu.max", "nonsense\n")
    (cgroup / "system.slice/app.service/cpu.max").unlink()
    assert read_cpu_quota(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) is None
    assert read_cpu_quota(proc_root=str(tmp_path / "none"), cgroup_root=str(cgroup)) is None
