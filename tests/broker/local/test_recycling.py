"""Tests of the worker recycling rules of the process lane, against real processes."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor.broker._local._recycling import calls_left, recycle_due, rss_bytes


def _gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@given(calls_done=st.integers(0, 1000), max_tasks=st.one_of(st.none(), st.integers(1, 1000)))
def test_quota_alone_decides_without_a_memory_limit(calls_done: int, max_tasks: int | None) -> None:
    """Without an RSS limit a worker recycles exactly when its calls reach the quota."""
    due = recycle_due(
        calls_done=calls_done, pid=os.getpid(), max_tasks=max_tasks, max_rss_bytes=None
    )
    assert due == (max_tasks is not None and calls_done >= max_tasks)
    left = calls_left(calls_done, max_tasks)
    assert left is None if max_tasks is None else left == max_tasks - calls_done


def test_memory_above_the_limit_recycles() -> None:
    """A process whose resident memory exceeds the limit is due; one under it is not."""
    rss = rss_bytes(os.getpid())
    assert rss > 0
    assert recycle_due(calls_done=0, pid=os.getpid(), max_tasks=None, max_rss_bytes=rss // 2)
    assert not recycle_due(calls_done=0, pid=os.getpid(), max_tasks=None, max_rss_bytes=rss * 4)


def test_gone_worker_reads_as_no_memory() -> None:
    """An exited worker reads as 0 bytes, so it is not recycled for memory."""
    pid = _gone_pid()
    assert rss_bytes(pid) == 0
    assert not recycle_due(calls_done=0, pid=pid, max_tasks=None, max_rss_bytes=1)
