"""The loop guard of ``tests/conftest.py``: in a guarded module, blocking on the loop fails."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import pytest
from blockbuster import BlockingError

if TYPE_CHECKING:
    from tests._loop_guard import LoopGuard


async def test_a_blocking_call_on_the_loop_raises(loop_guard: LoopGuard) -> None:
    """os.stat on the event loop's thread raises BlockingError, and the guard keeps it."""
    with loop_guard.expect_blocking(), pytest.raises(BlockingError):
        os.stat(".")
    assert [b.call for b in loop_guard.blocked] == ["os.stat"]


async def test_the_same_call_in_a_worker_thread_is_allowed() -> None:
    """Off the loop (a worker thread) the same call runs: only the loop is guarded."""
    result = await anyio.to_thread.run_sync(os.stat, ".")
    assert result.st_ino > 0
    assert threading.current_thread() is threading.main_thread()


def test_sync_tests_are_not_guarded() -> None:
    """A sync test has no event loop to protect: blocking calls run."""
    assert os.stat(".").st_ino > 0


PROBE = Path(__file__).with_name("_loop_guard_probe.py")


def test_the_guard_is_on_in_every_async_test_of_any_module() -> None:
    """
    A module on no list (the probe, run in a pytest of its own so that its tests can
    fail): each blocking call on the loop fails its test, in the test's own code, in
    library code, and when the code under test catches the guard's error; a marked
    helper may block, and a sync test is not guarded.
    """
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rA",
            "-q",
            "--no-cov",
            str(PROBE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROBE.parent.parent,
    )
    outcomes = {
        line.split(" ", 2)[1].split("::")[-1]: line.split(" ", 1)[0]
        for line in result.stdout.splitlines()
        if line.startswith(("PASSED ", "FAILED ", "ERROR "))
    }
    assert outcomes == {
        "test_sleeps_on_the_loop": "FAILED",
        "test_library_code_reads_proc_on_the_loop": "FAILED",
        "test_the_code_under_test_swallows_the_error": "ERROR",
        "test_a_marked_helper_may_block": "PASSED",
        "test_a_marked_helper_does_not_exempt_the_library": "FAILED",
        "test_a_sync_test_may_block": "PASSED",
    }, result.stdout + result.stderr
    assert "Blocking call to time.sleep" in result.stdout
    assert "_counts_fds_by_size" in result.stdout  # the library frame that blocked
    assert "the code under test caught the loop guard's error" in result.stdout
