"""The loop guard of ``tests/conftest.py``: in a guarded module, blocking on the loop fails."""

from __future__ import annotations

import os
import threading

import anyio.to_thread
import pytest
from blockbuster import BlockingError


async def test_a_blocking_call_on_the_loop_fails_a_guarded_test() -> None:
    """os.stat on the event loop's thread raises BlockingError in a guarded module."""
    with pytest.raises(BlockingError):
        os.stat(".")


async def test_the_same_call_in_a_worker_thread_is_allowed() -> None:
    """Off the loop (a worker thread) the same call runs: only the loop is guarded."""
    result = await anyio.to_thread.run_sync(os.stat, ".")
    assert result.st_ino > 0
    assert threading.current_thread() is threading.main_thread()


def test_sync_tests_are_not_guarded() -> None:
    """A sync test has no event loop to protect: blocking calls run."""
    assert os.stat(".").st_ino > 0
