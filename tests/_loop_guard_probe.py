"""
Tests that must fail under the loop guard, run only by ``tests/test_loop_guard.py``
in a pytest of their own (the name keeps them out of the suite's collection).
"""

from __future__ import annotations

import contextlib
import os
import time

from resource_supervisor._sources._proc import ProcReader
from tests._loop_guard import blocking_setup


async def test_sleeps_on_the_loop() -> None:
    """A plain blocking call in an async test: refused where it is made."""
    time.sleep(0.001)  # noqa: ASYNC251 - the probe blocks the loop on purpose


async def test_library_code_reads_proc_on_the_loop() -> None:
    """The library's /proc reader, meant for the sampler's read thread, run on the loop."""
    reader = ProcReader()
    try:
        reader.open()
        reader.read_fd_count()
    finally:
        reader.close()


async def test_the_code_under_test_swallows_the_error() -> None:
    """A refused call whose error is caught still fails the test (at its teardown)."""
    with contextlib.suppress(Exception):
        os.stat(".")


@blocking_setup("the probe's own setup: allowed")
def _own_setup() -> int:
    return os.stat(".").st_ino


@blocking_setup("calls library code: the allowance does not reach into it")
def _setup_that_calls_the_library() -> None:
    reader = ProcReader()
    try:
        reader.open()
        reader.read_fd_count()
    finally:
        reader.close()


async def test_a_marked_helper_may_block() -> None:
    """A helper marked with blocking_setup blocks on the loop: allowed."""
    assert _own_setup() > 0


async def test_a_marked_helper_does_not_exempt_the_library() -> None:
    """What the library does below a marked helper is still guarded."""
    _setup_that_calls_the_library()


def test_a_sync_test_may_block() -> None:
    """No event loop runs in a sync test: nothing to guard."""
    time.sleep(0.001)
