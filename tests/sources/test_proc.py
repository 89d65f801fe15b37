"""Tests for the /proc parsers and the kept-open ProcReader."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._sources._proc import (
    ProcReader,
    parse_meminfo,
    parse_pid_stat,
    parse_stat_cpu,
    parse_statm_rss_pages,
    pread_all,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
PROC = FIXTURES / "proc"
PID = 4242
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HAVE_PROC = os.path.isfile("/proc/self/statm")


def _meminfo_kib(key: str) -> int:
    for line in (PROC / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == key:
            return int(rest.split()[0])
    raise AssertionError(key)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- parsers -----------------------------------------------------------------------


def test_meminfo_fixture_gives_total_and_available_in_bytes() -> None:
    """MemTotal and MemAvailable are read from meminfo and converted from KiB to bytes."""
    host = parse_meminfo((PROC / "meminfo").read_bytes())
    assert host.total_bytes == _meminfo_kib("MemTotal") * 1024
    assert host.available_bytes == _meminfo_kib("MemAvailable") * 1024
    expected = (host.total_bytes - host.available_bytes) / host.total_bytes * 100
    assert host.percent == pytest.approx(expected)


def test_meminfo_without_memavailable_estimates_it() -> None:
    """Kernels without MemAvailable get MemFree + Buffers + Cached."""
    data = b"MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 30 kB\n"
    host = parse_meminfo(data)
    assert host.total_bytes == 1000 * 1024
    assert host.available_bytes == 150 * 1024


def test_meminfo_without_memtotal_is_an_error() -> None:
    """A meminfo without MemTotal cannot give a limit, so parsing fails loudly."""
    with pytest.raises(ValueError, match="MemTotal"):
        parse_meminfo(b"MemFree: 100 kB\n")


def test_stat_cpu_fixture_counts_idle_and_iowait_as_idle() -> None:
    """The cpu line's busy time is the total of the first 8 columns minus idle and iowait."""
    first = (PROC / "stat").read_text().splitlines()[0].split()
    ticks = [int(value) for value in first[1:9]]
    times = parse_stat_cpu((PROC / "stat").read_bytes())
    assert times.total == sum(ticks)
    assert times.busy == sum(ticks) - ticks[3] - ticks[4]


@given(st.lists(st.integers(0, 2**48), min_size=10, max_size=10))
def test_stat_cpu_leaves_guest_time_out_of_the_total(ticks: list[int]) -> None:
    """Guest and guest_nice are already inside user and nice, so they never count twice."""
    line = "cpu  " + " ".join(map(str, ticks)) + "\ncpu0 1 2 3 4\n"
    times = parse_stat_cpu(line.encode())
    assert times.total == sum(ticks[:8])
    assert times.busy == sum(ticks[:8]) - ticks[3] - ticks[4]


def test_stat_cpu_rejects_other_first_lines() -> None:
    """Content that does not start with the aggregate cpu line is an error."""
    with pytest.raises(ValueError, match="cpu line"):
        parse_stat_cpu(b"intr 1 2 3\n")


def test_pid_stat_fixture_gives_ticks_and_threads() -> None:
    """utime + stime (fields 14, 15) and num_threads (field 20) come from the stat line."""
    fields = (PROC / str(PID) / "stat").read_text().split()
    stat = parse_pid_stat((PROC / str(PID) / "stat").read_bytes())
    assert stat.cpu_ticks == int(fields[13]) + int(fields[14])
    assert stat.threads == int(fields[19])


@given(
    comm=st.text(alphabet="ab )(:x", max_size=15),
    utime=st.integers(0, 2**40),
    stime=st.integers(0, 2**40),
    threads=st.integers(1, 10**5),
)
def test_pid_stat_survives_any_command_name(
    comm: str, utime: int, stime: int, threads: int
) -> None:
    """Spaces and parentheses in the command name never shift the parsed fields."""
    tail = ["0"] * 30
    tail[11], tail[12], tail[17] = str(utime), str(stime), str(threads)
    line = f"123 ({comm}) S " + " ".join(tail[1:]) + "\n"
    stat = parse_pid_stat(line.encode())
    assert stat.cpu_ticks == utime + stime
    assert stat.threads == threads


def test_pid_stat_rejects_short_or_foreign_content() -> None:
    """Content without the command name or too few fields is an error, not garbage."""
    with pytest.raises(ValueError, match="stat"):
        parse_pid_stat(b"123 nothing here")
    with pytest.raises(ValueError, match="short"):
        parse_pid_stat(b"123 (x) S 1 2 3")


def test_statm_gives_resident_pages() -> None:
    """The second statm field is the resident set in pages."""
    fields = (PROC / str(PID) / "statm").read_text().split()
    assert parse_statm_rss_pages((PROC / str(PID) / "statm").read_bytes()) == int(fields[1])
    with pytest.raises(ValueError, match="short"):
        parse_statm_rss_pages(b"12")


def test_pread_all_reads_files_larger_than_the_first_buffer(tmp_path: Path) -> None:
    """A read that fills the buffer is retried larger, so nothing is cut off."""
    path = tmp_path / "big"
    payload = bytes(range(256)) * 40
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_all(fd, 16) == payload
        assert pread_all(fd, len(payload)) == payload
    finally:
        os.close(fd)


# -- the reader against fixtures -----------------------------------------------------


def test_reader_reads_a_fixture_tree() -> None:
    """With an injected root and pid, every figure comes from that tree."""
    with ProcReader(proc_root=str(PROC), pid=PID) as reader:
        assert reader.pid == PID
        host = reader.read_host_memory()
        assert host.total_bytes == _meminfo_kib("MemTotal") * 1024
        assert reader.read_process_stat().threads == 2
        statm = (PROC / str(PID) / "statm").read_text().split()
        assert reader.read_rss_bytes() == int(statm[1]) * PAGE_SIZE
        assert reader.read_fd_count() == len(os.listdir(PROC / str(PID) / "fd"))
        assert reader.read_cpu_times() == parse_stat_cpu((PROC / "stat").read_bytes())


def test_reader_rereads_kept_open_files(tmp_path: Path) -> None:
    """A file rewritten in place is seen by the next read without reopening."""
    root = tmp_path / "proc"
    shutil.copytree(PROC, root)
    with ProcReader(proc_root=str(root), pid=PID) as reader:
        before = reader.read_host_memory()
        with open(root / "meminfo", "r+b") as file:
            file.write(b"MemTotal: 2048 kB\nMemAvailable: 512 kB\n")
            file.truncate()
        after = reader.read_host_memory()
    assert before.total_bytes != after.total_bytes
    assert (after.total_bytes, after.available_bytes) == (2048 * 1024, 512 * 1024)


def test_reader_without_proc_falls_back_to_psutil(tmp_path: Path) -> None:
    """Where procfs is absent (not Linux), figures come from psutil for this process."""
    with ProcReader(proc_root=str(tmp_path / "absent")) as reader:
        assert reader.read_host_memory().total_bytes == psutil.virtual_memory().total
        rss = reader.read_rss_bytes()
        assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.1)
        assert reader.read_process_stat().threads == psutil.Process().num_threads()
        assert reader.read_cpu_times().total > 0
        assert abs(reader.read_fd_count() - psutil.Process().num_fds()) <= 2


def test_reader_for_a_vanished_process_raises_oserror(tmp_path: Path) -> None:
    """A pid directory that is missing under an existing root reads as OSError."""
    root = tmp_path / "proc"
    shutil.copytree(PROC, root)
    with ProcReader(proc_root=str(root), pid=999_999_999) as reader:
        with pytest.raises(OSError):  # noqa: PT011  # psutil and procfs raise different errnos
            reader.read_fd_count()
        with pytest.raises(OSError):  # noqa: PT011
            reader.read_rss_bytes()
        with pytest.raises(OSError):  # noqa: PT011
            reader.read_process_stat()


# -- the reader against this machine -------------------------------------------------

pytestmark_real = pytest.mark.skipif(not HAVE_PROC, reason="needs Linux /proc")


@pytestmark_real
def test_real_rss_and_threads_match_psutil() -> None:
    """On the real /proc, RSS is within 10% of psutil and threads match exactly."""
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with ProcReader() as reader:
            rss = reader.read_rss_bytes()
            threads = reader.read_process_stat().threads
            psutil_threads = psutil.Process().num_threads()
    finally:
        release.set()
        worker.join()
    assert rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.1)
    assert threads == psutil_threads
    assert threads >= 2


@pytestmark_real
def test_real_fd_count_follows_opened_files() -> None:
    """Opening three files raises the fd count by exactly three."""
    with ProcReader() as reader:
        before = reader.read_fd_count()
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        try:
            during = reader.read_fd_count()
        finally:
            for fd in fds:
                os.close(fd)
        after = reader.read_fd_count()
        psutil_count = psutil.Process().num_fds()
    assert during == before + 3
    assert after == before
    assert abs(after - psutil_count) <= 1


@pytestmark_real
def test_real_host_memory_matches_psutil() -> None:
    """Host total equals psutil's and the used percent is near psutil's."""
    with ProcReader() as reader:
        host = reader.read_host_memory()
    vm = psutil.virtual_memory()
    assert host.total_bytes == vm.total
    assert host.percent == pytest.approx(vm.percent, abs=5.0)


@pytestmark_real
def test_open_and_close_leak_no_fd_and_close_is_idempotent() -> None:
    """open() adds kept-open fds, close() removes all of them, twice is harmless."""
    before = _fd_count()
    reader = ProcReader()
    reader.open()
    reader.open()
    assert _fd_count() == before + 4
    reader.close()
    reader.close()
    assert _fd_count() == before
