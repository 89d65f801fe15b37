"""
Pure sizing and admission policy of the process lane.

Covers: how many workers the lane should have given its queue, its busy and idle
workers and the pressure level (:func:`target_workers`), and whether a new call
is admitted (:func:`admits`). Pure: no I/O, clock or await; the lane passes the
times in. Does not cover: starting or retiring workers (:mod:`._resizing`), the
pressure level itself (:mod:`..._policy`), chunk sizes of maps (:mod:`.._mapping`).

Rules, in the order they apply:

1. A cap by pressure: NORMAL allows ``max_workers``; WARNING half of it (at least
   one); CRITICAL exactly one.
2. Hysteresis on the way back (the cycle NORMAL -> WARNING/CRITICAL -> NORMAL):
   once the level returns to NORMAL, the cap stays at the WARNING cap until the
   level has been NORMAL for ``settle_seconds``, so a level that flaps around a
   threshold does not start and kill workers on every flap.
3. Grow while work waits: start workers up to ``min(cap, busy + queued)``, where
   *busy* counts workers running calls only. A worker still starting is not busy:
   it will take one of the queued calls, so it already counts against the
   workers those calls need (never more workers than calls waiting for one).
4. Memory: never start more at once than the memory headroom holds
   (``startable``, see :mod:`._headroom`).
5. Shrink: above the cap, idle workers retire now (busy ones after their call);
   under the cap, only workers idle longer than ``idle_timeout`` retire, and the
   others are never drained to make that happen.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..._snapshot import PressureLevel

__all__ = ("SizingDecision", "admits", "pressure_cap", "target_workers")


@dataclass(frozen=True, slots=True)
class SizingDecision:
    """
    What the lane should do now.

    Attributes:
        target: Workers the lane should have (started or starting).
        cap: The most workers allowed at this pressure.
        start: Workers to start now.
        retire_idle: Idle workers to retire now (longest idle first).
    """

    target: int
    cap: int
    start: int
    retire_idle: int


def pressure_cap(
    max_workers: int, level: PressureLevel, *, calm_for: float, settle_seconds: float
) -> int:
    """
    Return the most workers allowed at *level* (rules 1 and 2 above).

    Args:
        max_workers: The lane's configured worker count (>= 1).
        level: The current pressure level.
        calm_for: Seconds since the level was last above NORMAL (``inf`` if never).
        settle_seconds: How long NORMAL must hold before the full cap returns.

    Returns:
        A cap between 1 and *max_workers*.
    """
    half = max(1, max_workers // 2)
    if level >= PressureLevel.CRITICAL:
        return 1
    if level == PressureLevel.WARNING:
        return half
    if calm_for < settle_seconds:
        return half
    return max_workers


def target_workers(
    *,
    max_workers: int,
    queued: int,
    busy: int,
    live: int,
    idle_expired: int,
    level: PressureLevel,
    starting: int = 0,
    calm_for: float = float("inf"),
    settle_seconds: float = 0.0,
    startable: int | None = None,
) -> SizingDecision:
    """
    Decide the lane's worker count (see the module docstring for the rules).

    Args:
        max_workers: The lane's configured worker count (>= 1).
        queued: Calls waiting for a worker.
        busy: Workers running calls (not those still starting).
        live: Workers started or starting, busy or idle (>= *busy* + *starting*).
        idle_expired: Idle workers idle longer than the idle timeout
            (<= live - busy - starting).
        level: The current pressure level.
        starting: Workers still starting (counted in *live*).
        calm_for: Seconds since the level was last above NORMAL.
        settle_seconds: How long NORMAL must hold before growing back fully.
        startable: Most workers the memory headroom holds now; ``None`` for no bound.

    Returns:
        The decision; ``live + start <= cap``, ``start <= queued`` and
        ``retire_idle <= live - busy - starting``.
    """
    cap = pressure_cap(max_workers, level, calm_for=calm_for, settle_seconds=settle_seconds)
    idle = max(0, live - busy - starting)
    demand = busy + queued
    # keep every worker that is busy, still wanted, or idle but not yet expired
    kept = max(demand, live - min(idle_expired, idle))
    target = min(cap, kept)
    start = max(0, min(cap, demand) - live)
    if startable is not None:
        start = min(start, max(0, startable))
    retire_idle = min(idle, max(0, live - target))
    return SizingDecision(target=target, cap=cap, start=start, retire_idle=retire_idle)


def admits(*, level: PressureLevel, queued: int, queue_limit: int) -> bool:
    """
    Return whether a new call may join the queue.

    Args:
        level: The current pressure level.
        queued: Calls already waiting for a worker.
        queue_limit: Calls kept queued at CRITICAL before refusing.

    Returns:
        ``False`` only at CRITICAL with *queued* >= *queue_limit*.
    """
    return level < PressureLevel.CRITICAL or queued < queue_limit
