"""The slot's progress memory: a counter and flags over one shared block, no ctypes."""

from __future__ import annotations

import multiprocessing

import pytest

from resource_supervisor.broker._local._shared_progress import (
    SharedFlags,
    SharedInt,
    shared_progress,
)

pytestmark = pytest.mark.timeout(30)


def _advance(counter: SharedInt, flags: SharedFlags) -> None:
    """In a spawned child: record what it saw, then write its own values."""
    flags[1] = 1 if counter.value == 41 and flags[0] == 7 else -1
    counter.value = -(2**63)


def test_counter_and_flags_start_as_asked_and_hold_what_is_stored() -> None:
    """The counter starts at *start*, every flag at 0; 64-bit and signed-byte ranges hold."""
    counter, flags = shared_progress(-1, 5)
    assert counter.value == -1
    assert len(flags) == 5
    assert [flags[i] for i in range(5)] == [0] * 5
    counter.value = 2**63 - 1
    flags[4] = -128
    flags[0] = 127
    assert counter.value == 2**63 - 1
    assert (flags[0], flags[4]) == (127, -128)
    with pytest.raises(IndexError):
        flags[5] = 1
    with pytest.raises(ValueError, match="flags must not be negative"):
        shared_progress(0, -1)


def test_a_reused_block_starts_clean() -> None:
    """A block freed by one slot and handed to the next holds none of its values."""
    for _ in range(50):  # freed blocks go back to the shared heap and are handed out again
        counter, flags = shared_progress(3, 32)
        assert counter.value == 3
        assert not any(flags[i] for i in range(32))
        counter.value = 99
        for i in range(32):
            flags[i] = 1
        del counter, flags


def test_a_spawned_process_shares_the_memory() -> None:
    """Passed to a real child as start arguments (the way a worker gets them), both
    values are the same memory on both sides."""
    counter, flags = shared_progress(41, 2)
    flags[0] = 7
    child = multiprocessing.get_context("spawn").Process(target=_advance, args=(counter, flags))
    child.start()
    child.join(20)  # hang guard: a fresh interpreter starts
    assert child.exitcode == 0
    assert flags[1] == 1
    assert counter.value == -(2**63)
