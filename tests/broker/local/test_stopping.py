"""The atomic withdraw-or-kill decision for a handed-over call, on a real shared channel."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
from typing import cast

import pytest

from resource_supervisor.broker._local._slot import Call, Slot, SlotState
from resource_supervisor.broker._local._stopping import Stop, stop_call

pytestmark = pytest.mark.timeout(30)


async def _slot_with(started: int, calls: int) -> tuple[Slot, list[Call]]:
    """A busy slot whose worker last started call *started*, with *calls* handed over."""
    ctx = multiprocessing.get_context("spawn")
    slot = Slot(state=SlotState.BUSY)
    slot.progress = cast("object", ctx.RawValue("q", started))  # type: ignore[assignment]
    slot.skip = cast("object", ctx.RawArray("b", 8))  # type: ignore[assignment]
    slot.lock = ctx.Lock()
    loop = asyncio.get_running_loop()
    batch = []
    for position in range(calls):
        call = Call(b"", "f", None, loop.create_future(), kill_on_cancel=True)
        call.seq, call.position, call.slot = position, position, slot
        slot.in_flight.append(call)
        batch.append(call)
    return slot, batch


async def test_a_call_not_started_is_withdrawn() -> None:
    """Progress below the call: its flag is set, nothing else."""
    slot, (_, second) = await _slot_with(0, 2)
    assert stop_call(slot, second, kill=True) is Stop.WITHDRAWN
    assert slot.skip is not None
    assert (slot.skip[0], slot.skip[1]) == (0, 1)


async def test_a_finished_call_kills_nothing_and_a_running_one_runs_on_without_kill() -> None:
    """Progress above the call: finished; equal without kill: running, no flag set."""
    slot, (first, second) = await _slot_with(1, 2)
    assert stop_call(slot, first, kill=True) is Stop.FINISHED
    assert stop_call(slot, second, kill=False) is Stop.RUNNING
    assert slot.skip is not None
    assert (slot.skip[0], slot.skip[1]) == (0, 0)


async def test_a_running_call_is_killed_and_the_rest_of_its_batch_flagged() -> None:
    """Progress equal with kill: SIGKILL to the worker, later calls flagged."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as worker:  # noqa: ASYNC220
        slot, (first, *_) = await _slot_with(0, 3)
        slot.pid = worker.pid
        assert stop_call(slot, first, kill=True) is Stop.KILLED
        assert worker.wait(timeout=10) == -9
    assert slot.skip is not None
    assert (slot.skip[0], slot.skip[1], slot.skip[2]) == (0, 1, 1)


async def test_a_held_lock_leaves_the_decision_for_later() -> None:
    """While the worker holds the lock, nothing is decided and nothing changes."""
    slot, (first,) = await _slot_with(0, 1)
    assert slot.lock is not None
    with slot.lock:
        assert stop_call(slot, first, kill=True) is Stop.UNDECIDED
    assert stop_call(slot, first, kill=False) is Stop.RUNNING
