"""A slot owns its life: every state change goes through it and follows the allowed moves."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from resource_supervisor.broker._local import _slot
from resource_supervisor.broker._local._protocol import split_batch
from resource_supervisor.broker._local._shared_progress import shared_progress
from resource_supervisor.broker._local._slot import Call, Slot, SlotState, SlotStateError

LOCAL = Path(_slot.__file__).parent


def _call(loop: asyncio.AbstractEventLoop, payload: bytes = b"p") -> Call:
    return Call(payload, "f", None, loop.create_future(), kill_on_cancel=True)


def _state(slot: Slot) -> SlotState:
    return slot.state  # read through a call: each assert sees the state anew


def _busy_slot(loop: asyncio.AbstractEventLoop, calls: int) -> tuple[Slot, list[Call]]:
    slot = Slot()
    slot.skip = shared_progress(-1, 32)[1]
    slot.mark_idle(0.0)
    batch = [_call(loop, bytes([i])) for i in range(calls)]
    slot.send(batch)
    return slot, batch


async def test_a_slot_lives_starting_idle_busy_idle_retiring_dead() -> None:
    """The ordinary life: started, handed a batch (numbered, framed, in flight), idle
    again, retired, dead; a second death is a no-op."""
    loop = asyncio.get_running_loop()
    slot, batch = _busy_slot(loop, 2)
    assert _state(slot) is SlotState.BUSY
    assert [c.seq for c in batch] == [0, 1]
    assert list(slot.in_flight) == batch
    assert split_batch(slot.outgoing) == [(0, b"\x00"), (1, b"\x01")]
    slot.in_flight.clear()
    slot.mark_idle(5.0)
    assert (slot.state, slot.idle_since) == (SlotState.IDLE, 5.0)
    slot.mark_retiring()
    slot.mark_dead()
    slot.mark_dead()
    assert _state(slot) is SlotState.DEAD


async def test_moves_a_slot_does_not_make_are_refused() -> None:
    """A busy slot cannot be sent a second batch, a dead one never comes back, a
    killed one only dies: each refused move names both states and changes nothing."""
    loop = asyncio.get_running_loop()
    slot, _ = _busy_slot(loop, 1)
    with pytest.raises(SlotStateError, match="a busy slot cannot become busy"):
        slot.send([_call(loop)])
    slot.mark_killed("timeout")
    assert (slot.state, slot.kill_reason) == (SlotState.KILLED, "timeout")
    with pytest.raises(SlotStateError, match="a killed slot cannot become idle"):
        slot.mark_idle(1.0)
    slot.mark_dead()
    with pytest.raises(SlotStateError):
        slot.mark_idle(1.0)
    with pytest.raises(SlotStateError):
        slot.mark_retiring()
    with pytest.raises(SlotStateError):
        slot.mark_killed("again")
    assert slot.state is SlotState.DEAD


async def test_withdrawing_after_a_call_takes_back_only_the_later_ones() -> None:
    """A kill of the running call gives back the calls handed over after it."""
    loop = asyncio.get_running_loop()
    slot, batch = _busy_slot(loop, 4)
    assert slot.withdraw_after(batch[1]) == batch[2:]
    assert list(slot.in_flight) == batch[:2]


def test_only_the_slot_changes_a_slot_state() -> None:
    """No module of the local lane but the slot's assigns a ``.state``: the slot's life
    is in one class."""
    offenders = []
    for path in sorted(LOCAL.glob("*.py")):
        if path.name == "_slot.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            offenders += [
                f"{path.name}:{t.lineno}"
                for t in targets
                if isinstance(t, ast.Attribute) and t.attr == "state"
            ]
    assert offenders == []
