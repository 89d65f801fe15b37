"""
A real container memory limit: a child service in a fresh memory cgroup.

The supervised service reads the cgroup's limit (not the host's memory), reaches
WARNING and CRITICAL, has its cache cleaned up and survives a ramp that allocates
twice the limit; the same ramp without the supervisor is killed by the kernel's
OOM killer. Each test creates its cgroup inside this process's own memory cgroup
(never at the hierarchy root) and removes it afterwards, also on failure.

Needs root and a writable memory controller (cgroup v1, or v2 with ``+memory``
delegable to a child of this process's cgroup); skipped with the reason otherwise.
The service itself is ``tests/_cgroup_child.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.cgroup, pytest.mark.slow, pytest.mark.timeout(60)]

MiB = 1024 * 1024
LIMIT_BYTES = 300 * MiB
STEP_BYTES = 10 * MiB
TARGET_BYTES = 2 * LIMIT_BYTES
CHILD = Path(__file__).with_name("_cgroup_child.py")
RUN_TIMEOUT_SECONDS = 40.0


@dataclass(frozen=True)
class MemoryCgroup:
    """A child memory cgroup created for one test."""

    version: Literal["cgroup_v1", "cgroup_v2"]
    path: Path
    parent: Path

    def add(self, pid: int) -> None:
        """Move process *pid* into this cgroup."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """The processes in this cgroup now."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(line) for line in text.split()]

    def oom_kills(self) -> int:
        """How many processes the OOM killer has killed in this cgroup."""
        name = "memory.oom_control" if self.version == "cgroup_v1" else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill counter in {self.path / name}")


def _own_memory_cgroup() -> tuple[Literal["cgroup_v1", "cgroup_v2"], Path]:
    """Find this process's memory cgroup directory (v1 memory hierarchy, else v2)."""
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
        pytest.skip("this process is in a v1 memory cgroup, but the hierarchy is not mounted")
    if v2_path is not None:
        for fstype, root, mount_point, _ in mounts:
            if fstype == "cgroup2":
                return "cgroup_v2", under(root, mount_point, v2_path)
    pytest.skip("no memory cgroup (neither a v1 memory hierarchy nor cgroup2) is mounted")


def _write(path: Path, value: str) -> None:
    path.write_text(value)


def _create_cgroup(limit_bytes: int) -> MemoryCgroup:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("creating a memory cgroup needs root on Linux")
    version, own = _own_memory_cgroup()
    if version == "cgroup_v2":
        if "memory" not in (own / "cgroup.controllers").read_text().split():
            pytest.skip(f"the memory controller is not available in {own}")
        if "memory" not in (own / "cgroup.subtree_control").read_text().split():
            try:
                _write(own / "cgroup.subtree_control", "+memory")
            except OSError as exc:
                pytest.skip(
                    f"cannot enable +memory for children of {own} ({exc}); the "
                    "no-internal-processes rule forbids it while this cgroup holds processes"
                )
    path = own / f"rs-test-{secrets.token_hex(4)}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup under {own}: {exc}")
    cgroup = MemoryCgroup(version, path, own)
    try:
        if version == "cgroup_v1":
            _write(path / "memory.limit_in_bytes", str(limit_bytes))
            if (path / "memory.memsw.limit_in_bytes").exists():
                # memory+swap at the same value: swap cannot hide the limit
                _write(path / "memory.memsw.limit_in_bytes", str(limit_bytes))
        else:
            _write(path / "memory.max", str(limit_bytes))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
    except OSError as exc:
        _remove_cgroup(cgroup)
        pytest.skip(f"cannot set a memory limit on {path}: {exc}")
    return cgroup


def _remove_cgroup(cgroup: MemoryCgroup) -> None:
    """Move any process left in *cgroup* to its parent, then remove it."""
    deadline = time.monotonic() + 10.0
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


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to LIMIT_BYTES; removed afterwards, also on failure."""
    cgroup = _create_cgroup(LIMIT_BYTES)
    try:
        yield cgroup
    finally:
        _remove_cgroup(cgroup)


@dataclass(frozen=True)
class ChildRun:
    """What a child service did."""

    returncode: int
    lines: list[dict[str, object]]
    stderr: str


def _run_child(cgroup: MemoryCgroup, mode: str) -> ChildRun:
    env = dict(os.environ)
    # Large blocks always come from mmap, so freeing them returns memory to the
    # kernel at once (glibc would otherwise raise its mmap threshold after the
    # first free and keep freed blocks in the heap).
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 * MiB)
    env.pop("COVERAGE_PROCESS_START", None)
    process = subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(STEP_BYTES), str(TARGET_BYTES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        cgroup.add(process.pid)  # before it allocates: it waits for "go"
        assert process.pid in cgroup.pids()
        stdout, stderr = process.communicate(b"go\n", timeout=RUN_TIMEOUT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return ChildRun(process.returncode, lines, stderr.decode())


def test_supervised_service_reads_the_cgroup_limit_cleans_up_and_survives(
    memory_cgroup: MemoryCgroup,
) -> None:
    """
    Inside a 300 MiB cgroup the supervisor measures against the cgroup limit, not
    host memory; a ramp allocating 600 MiB in total drives it to WARNING and
    CRITICAL, the registered cache is cleaned (aggressively at CRITICAL), and the
    service finishes with exit status 0 and no OOM kill in its cgroup.
    """
    run = _run_child(memory_cgroup, "supervised")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.lines, run.stderr[-3000:]
    assert run.lines[-1] == {"done": True}
    steps = run.lines[:-1]
    expected_source = memory_cgroup.version
    for record in steps:
        assert record["memory_limit_bytes"] == LIMIT_BYTES
        assert record["memory_limit_source"] == expected_source
    assert steps[-1]["allocated_bytes"] == TARGET_BYTES
    levels = {record["level"] for record in steps}
    assert {"WARNING", "CRITICAL"} <= levels, levels
    final = steps[-1]
    assert isinstance(final["cleanups"], int)
    assert isinstance(final["aggressive_cleanups"], int)
    assert final["cleanups"] >= 2
    assert final["aggressive_cleanups"] >= 1
    peak_percent = max(float(str(record["memory_percent"])) for record in steps)
    assert 60.0 <= peak_percent < 100.0
    assert memory_cgroup.oom_kills() == 0


def test_same_ramp_without_the_supervisor_is_oom_killed(memory_cgroup: MemoryCgroup) -> None:
    """
    The control run: the same ramp with nothing freeing the cache is killed by
    the kernel's OOM killer (SIGKILL, counted in the cgroup's oom_kill counter)
    before it reaches its target, which proves the limit is real.
    """
    run = _run_child(memory_cgroup, "unsupervised")
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-3000:])
    assert memory_cgroup.oom_kills() >= 1
    assert {"done": True} not in run.lines
    allocated = [int(str(record["allocated_bytes"])) for record in run.lines]
    assert allocated, "the child died before its first step"
    assert max(allocated) < TARGET_BYTES
