"""
Nothing the process lane started outlives a service that is SIGKILLed.

A real service process (``tests/_orphan_service.py``) keeps its workers busy and
a big-argument call queued, then is killed with SIGKILL, as the kernel's OOM
killer would: every process it started (workers, the lane's forkserver) exits
within seconds, stopping its work, and no spill file is left behind. A spill file
a dead service left is swept when the next lane starts; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._spill import SPILL_PREFIX, spill_prefix, sweep_spills
from tests import _workers
from tests._settings import lane_settings

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
GONE_WITHIN_SECONDS = 3.0


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _resource_tracker(proc: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_sigkilled_service_leaves_no_process_and_no_spill_file(
    tmp_path: Path, start_method: str
) -> None:
    """
    SIGKILL a service whose two workers are busy (one spinning, one sleeping) and
    which has a big-argument call queued: within a few seconds no process it
    started is running and its temporary directory holds no spill file.
    """
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    service = subprocess.Popen(
        [sys.executable, "-m", "tests._orphan_service", start_method],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        line = json.loads(service.stdout.readline())
        assert line["ready"] is True
        assert len(line["workers"]) == 2
        assert any(p.name.startswith(SPILL_PREFIX) for p in tmp_path.iterdir())
        started = psutil.Process(service.pid).children(recursive=True)
        assert set(line["workers"]) <= {p.pid for p in started}
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
        deadline = time.monotonic() + GONE_WITHIN_SECONDS
        left = [p for p in started if _alive(p) and not _resource_tracker(p)]
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [p for p in left if _alive(p)]
        assert left == [], f"still running {GONE_WITHIN_SECONDS} s after the service died: {left}"
        # (multiprocessing's own pymp-* directory of the service stays: not the lane's)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(SPILL_PREFIX)] == []
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        if service.stdout is not None:
            service.stdout.close()
        for proc in psutil.Process().children(recursive=True):
            if proc.pid != os.getpid() and not _resource_tracker(proc):
                try:
                    if proc.ppid() != os.getpid():
                        proc.kill()
                except psutil.Error:
                    pass


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as dead:
        dead.wait()
    return dead.pid


def test_sweep_removes_only_spill_files_of_dead_services(tmp_path: Path) -> None:
    """
    The sweep removes a regular spill file named for a pid that no longer runs; it
    keeps a live service's file, this process's own, a symbolic link with a dead
    owner's name (and its target), and files whose names only look similar.
    """
    dead = _dead_pid()
    stale = tmp_path / f"{spill_prefix(dead)}abc123"
    stale.write_bytes(b"old")
    live = tmp_path / f"{spill_prefix(1)}keep"
    live.write_bytes(b"init's")
    own = tmp_path / f"{spill_prefix()}mine"
    own.write_bytes(b"mine")
    target = tmp_path / "target"
    target.write_bytes(b"precious")
    link = tmp_path / f"{spill_prefix(dead)}link"
    link.symlink_to(target)
    odd = [
        tmp_path / f"{SPILL_PREFIX}x-1",
        tmp_path / f"{SPILL_PREFIX}{dead}",
        tmp_path / "other",
    ]
    for path in odd:
        path.write_bytes(b"?")
    assert sweep_spills(str(tmp_path)) == 1
    assert not stale.exists()
    assert live.exists()
    assert own.exists()
    assert link.is_symlink()
    assert target.exists()
    assert all(path.exists() for path in odd)


async def test_a_new_lane_sweeps_spill_files_a_dead_service_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lane's first call sweeps the temporary directory of a dead service's spill files."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    stale = tmp_path / f"{spill_prefix(_dead_pid())}abc123"
    stale.write_bytes(b"old")
    async with ProcessLane(lane_settings(), max_workers=1) as lane:
        assert await lane.run(_workers.square, (3,), timeout=None) == 9
    assert not stale.exists()
