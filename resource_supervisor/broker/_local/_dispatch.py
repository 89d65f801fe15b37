"""
Pure batching decisions of the local process lane.

Covers: how many queued calls a free slot takes as one batch (:func:`batch_size`)
and, once a slot's worker is gone, which of its calls was running and which never
started (:func:`sort_unfinished`). Pure: no I/O, clock or await; the lane passes
in its queue, the measured call time and the worker's progress number. Does not
cover: sending a batch (:mod:`._lane`) or reading its outcomes (:mod:`._delivery`), the progress
channel itself (:mod:`._slot`), the worker's half (:mod:`._worker`) or how many
slots the lane has (:mod:`._sizing`).

Rules for a batch, in the order they apply:

1. Only calls measured to be short are batched: while the moving mean of the
   worker-side call time is unknown or at least :data:`BATCH_MAX_CALL_SECONDS`, a
   batch is one call.
2. The queue is shared among the free and starting slots (``ceil(queued / free)``,
   at most :data:`._protocol.MAX_BATCH`), so a batch never holds work another
   worker could start.
3. A worker near its ``max_tasks_per_worker`` quota takes only the calls it has
   left (at least one).
4. A call with a timeout runs alone, so killing its worker harms no other call:
   it is a batch of one when first in line, and ends a batch otherwise.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from . import _protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ("BATCH_MAX_CALL_SECONDS", "batch_size", "sort_unfinished")

BATCH_MAX_CALL_SECONDS: Final = 0.002
"""Calls are batched only while their measured mean stays below this (2 ms)."""


class _Timed(Protocol):
    @property
    def timeout(self) -> float | None: ...


class _Numbered(Protocol):
    @property
    def seq(self) -> int: ...


N = TypeVar("N", bound=_Numbered)


def batch_size(
    queue: Sequence[_Timed],
    *,
    call_seconds: float | None,
    free_slots: int,
    quota_left: int | None,
) -> int:
    """
    Return how many calls from the head of *queue* one free slot takes now.

    Args:
        queue: The calls waiting, first in line first.
        call_seconds: Moving mean of the worker-side call time; ``None`` before
            any call finished.
        free_slots: Idle and starting slots, this one included (>= 1).
        quota_left: Calls the slot may still run before it is recycled; ``None``
            for no quota.

    Returns:
        0 for an empty queue, else between 1 and :data:`._protocol.MAX_BATCH`.
    """
    if not queue:
        return 0
    limit = 1
    if call_seconds is not None and call_seconds < BATCH_MAX_CALL_SECONDS:
        limit = min(_protocol.MAX_BATCH, math.ceil(len(queue) / free_slots))
    if quota_left is not None:
        limit = max(1, min(limit, quota_left))
    if queue[0].timeout is not None:
        return 1
    size = 1
    for call in itertools.islice(queue, 1, limit):
        if call.timeout is not None:
            break
        size += 1
    return size


def sort_unfinished(calls: Iterable[N], started: int) -> tuple[N | None, list[N], list[N]]:
    """
    Sort the calls a dead worker had not answered by the worker's progress number.

    Args:
        calls: The slot's unanswered calls, in the order they were handed over.
        started: The number of the call the worker last started (-1 if none).

    Returns:
        ``(running, not_started, lost)``: the call numbered *started* (it was
        running when the worker died), the calls numbered above it (never started;
        queue them again), and any other (finished, but the outcome was lost).
    """
    running: N | None = None
    not_started: list[N] = []
    lost: list[N] = []
    for call in calls:
        if call.seq > started:
            not_started.append(call)
        elif running is None and call.seq == started:
            running = call
        else:
            lost.append(call)
    return running, not_started, lost
