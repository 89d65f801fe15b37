"""Tests for the memory PSI parser and the kept-open PsiReader."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._sources._psi import PsiMemory, PsiReader, parse_psi

FIXTURES = Path(__file__).parents[1] / "fixtures"
PID = 4242
V2_PROC = str(FIXTURES / "cgroup/v2/proc")
V2_CGROUP = FIXTURES / "cgroup/v2/sys/fs/cgroup"

averages = st.decimals(min_value=0, max_value=100, places=2).map(float)


def rewrite(path: Path, text: str) -> None:
    """Rewrite a file in place (same inode), as the kernel's files change."""
    with open(path, "r+") as file:
        file.write(text)
        file.truncate()


def test_parse_real_proc_pressure_memory() -> None:
    """The file copied from this machine parses to its some and full avg10 values."""
    text = (FIXTURES / "proc/pressure/memory").read_text()
    lines = {line.split()[0]: line.split()[1] for line in text.splitlines()}
    psi = parse_psi(text.encode())
    assert psi.some_avg10 == float(lines["some"].removeprefix("avg10="))
    assert psi.full_avg10 == float(lines["full"].removeprefix("avg10="))


@given(some=averages, full=st.one_of(st.none(), averages))
def test_parse_psi_round_trips(some: float, full: float | None) -> None:
    """Values written in the kernel's format parse back; a missing full line gives None."""
    text = f"some avg10={some:.2f} avg60=0.00 avg300=0.00 total=12\n"
    if full is not None:
        text += f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=3\n"
    assert parse_psi(text) == PsiMemory(some_avg10=some, full_avg10=full)


def test_parse_psi_without_some_is_an_error() -> None:
    """Content without a 'some avg10=' field is not PSI."""
    with pytest.raises(ValueError, match="some"):
        parse_psi("full avg10=1.00\n")
    with pytest.raises(ValueError, match="some"):
        parse_psi(b"")


def test_reader_prefers_the_own_cgroup_v2_file() -> None:
    """With cgroup v2, the process's own memory.pressure is read, not the system one."""
    with PsiReader(proc_root=V2_PROC, cgroup_root=str(V2_CGROUP), pid=PID) as reader:
        assert reader.path == str(V2_CGROUP / "system.slice/app.service/memory.pressure")
        assert reader.read() == PsiMemory(some_avg10=1.5, full_avg10=0.25)


def test_reader_falls_back_to_proc_pressure(tmp_path: Path) -> None:
    """Without a v2 cgroup file, <proc_root>/pressure/memory is read."""
    proc = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc", proc)
    with PsiReader(proc_root=str(proc), cgroup_root=str(tmp_path / "no-cgroup"), pid=PID) as r:
        assert r.path == str(proc / "pressure/memory")
        assert r.read() == parse_psi((proc / "pressure/memory").read_bytes())


def test_reader_without_psi_reads_none(tmp_path: Path) -> None:
    """No PSI file anywhere: no path, read() gives None (the sample then has no PSI keys)."""
    with PsiReader(proc_root=str(tmp_path), cgroup_root=str(tmp_path), pid=PID) as reader:
        assert reader.path is None
        assert reader.read() is None


def test_reader_skips_a_file_that_is_not_psi(tmp_path: Path) -> None:
    """A cgroup file that cannot be parsed is skipped in favour of the next candidate."""
    shutil.copytree(FIXTURES / "cgroup/v2", tmp_path / "v2")
    cgroup = tmp_path / "v2/sys/fs/cgroup"
    rewrite(cgroup / "system.slice/app.service/memory.pressure", "garbage\n")
    proc = tmp_path / "v2/proc"
    shutil.copytree(FIXTURES / "proc/pressure", proc / "pressure")
    with PsiReader(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as reader:
        assert reader.path == str(proc / "pressure/memory")


def test_reader_rereads_the_kept_open_file(tmp_path: Path) -> None:
    """A rewritten PSI file is seen by the next read without reopening."""
    shutil.copytree(FIXTURES / "cgroup/v2", tmp_path / "v2")
    cgroup = tmp_path / "v2/sys/fs/cgroup"
    with PsiReader(proc_root=str(tmp_path / "v2/proc"), cgroup_root=str(cgroup), pid=PID) as reader:
        rewrite(
            cgroup / "system.slice/app.service/memory.pressure",
            "some avg10=42.00 avg60=1.00 avg300=0.10 total=9\n"
            "full avg10=7.25 avg60=1.00 avg300=0.10 total=3\n",
        )
        assert reader.read() == PsiMemory(some_avg10=42.0, full_avg10=7.25)


def test_reader_close_is_idempotent_and_releases_the_fd() -> None:
    """close() releases the kept-open fd; closing twice is harmless; path becomes None."""
    before = len(os.listdir("/proc/self/fd"))
    reader = PsiReader(proc_root=V2_PROC, cgroup_root=str(V2_CGROUP), pid=PID)
    reader.open()
    reader.open()
    assert len(os.listdir("/proc/self/fd")) == before + 1
    reader.close()
    reader.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert reader.path is None


@pytest.mark.skipif(not os.path.exists("/proc/pressure/memory"), reason="kernel without PSI")
def test_reader_on_this_machine() -> None:
    """The real PSI file is found and gives percentages in [0, 100]."""
    with PsiReader() as reader:
        assert reader.path is not None
        psi = reader.read()
    assert psi is not None
    assert 0.0 <= psi.some_avg10 <= 100.0
    assert psi.full_avg10 is not None
    assert 0.0 <= psi.full_avg10 <= psi.some_avg10 + 1e-9
