"""
Stopping one handed-over call of the local process lane: withdraw it, or kill it.

Covers: :func:`stop_call`, the decision taken when a call handed to a slot is
cancelled or times out, and :class:`Stop`, its outcome. Does not cover: what the
lane does with the outcome (:mod:`._kills`), the slot and its shared progress
channel (:mod:`._slot`), or the worker's half of the protocol (:mod:`._worker`).

Why atomic: a worker runs the calls of a batch one after the other. A call whose
caller gives up may have finished a moment ago, with the worker already running
the next call of its batch; killing the worker then fails a call nobody
cancelled. So the decision is taken under the slot's lock, the same lock the
worker holds while it checks a call's withdrawal flag and stores the call's
number in ``progress`` (see :func:`._worker.run_batch`). The cases, by the
worker's ``progress`` against the call's number:

- below: the call has not started; its flag is set and the worker skips it
  (:attr:`Stop.WITHDRAWN`);
- equal: the call is running (or finished without its outcome written yet). With
  *kill*, every later call of the batch is flagged too, and SIGKILL is sent while
  the lock is still held, so the worker can start nothing else before it dies
  (:attr:`Stop.KILLED`); without *kill* it runs on (:attr:`Stop.RUNNING`);
- above: the call has finished and the worker has moved on (:attr:`Stop.FINISHED`);
  nothing is killed.

The lock is held by the worker for microseconds; if it cannot be taken within
:data:`LOCK_WAIT_SECONDS` (the worker is descheduled, stopped or dying) the answer
is :attr:`Stop.UNDECIDED` and the lane asks again a moment later.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from ._launcher import kill_worker

if TYPE_CHECKING:
    from ._slot import Call, Slot

__all__ = ("LOCK_WAIT_SECONDS", "Stop", "stop_call")

LOCK_WAIT_SECONDS: Final = 0.002
"""Longest the event loop waits for a slot's lock in one :func:`stop_call`."""


class Stop(enum.Enum):
    """What :func:`stop_call` did."""

    WITHDRAWN = "withdrawn"
    """The call had not started; the worker will skip it."""
    KILLED = "killed"
    """The call was running; its worker was sent SIGKILL."""
    RUNNING = "running"
    """The call is running and was left to run (no kill asked)."""
    FINISHED = "finished"
    """The call had finished; its worker was left alone."""
    UNDECIDED = "undecided"
    """The slot's lock could not be taken now; ask again later."""


def stop_call(slot: Slot, call: Call, *, kill: bool) -> Stop:
    """
    Withdraw *call* from its slot, or kill its worker if it runs (see the module docstring).

    Args:
        slot: The slot the call was handed to (its channel is open).
        call: The call, still in ``slot.in_flight``.
        kill: Kill the worker if the call is running.

    Returns:
        What was done. After :attr:`Stop.KILLED` the calls after *call* in
        ``slot.in_flight`` are flagged and will never start.
    """
    lock, progress, skip = slot.lock, slot.progress, slot.skip
    if lock is None or progress is None or skip is None:  # pragma: no cover - set with the pid
        return Stop.UNDECIDED
    if not lock.acquire(timeout=LOCK_WAIT_SECONDS):
        return Stop.UNDECIDED
    try:
        started = progress.value
        if started < call.seq:
            skip[call.position] = 1
            return Stop.WITHDRAWN
        if started > call.seq:
            return Stop.FINISHED
        if not kill:
            return Stop.RUNNING
        for later in slot.in_flight:
            if later.seq > call.seq:
                skip[later.position] = 1
        kill_worker(slot.pid)  # under the lock: the worker cannot start another call
        return Stop.KILLED
    finally:
        lock.release()
