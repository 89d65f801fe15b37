"""
The order of the admission queue: FIFO while it drains in time, newest first once it
does not (adaptive LIFO). Pure; used by :mod:`._limiter`.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = (
    "LIFO_AFTER_REFERENCE",
    "STANDING_WAIT_REFERENCE",
    "lifo_after",
    "serve_newest",
    "wait_bound",
)

LIFO_AFTER_REFERENCE: Final = 0.25
"""The queue turns LIFO once its oldest caller has waited this fraction of the
reference latency: an admitted caller then waits at most about that long (or one
gap between arrivals), whatever the backlog behind it. Measured with
``benchmarks/admission.py``: at half the wait bound (1.5 reference latencies with
``queue_timeout: auto``) the first callers of an overload waited that long in FIFO
order and set the p99 of admitted calls (wait p99 158 ms at 4x, 81 ms unloaded)."""


STANDING_WAIT_REFERENCE: Final = 0.5
"""Once the queue has not been empty for a whole wait bound (a standing queue:
overload, not a burst), a caller is served only within this fraction of the
reference latency and refused beyond it (CoDel's target under a standing queue,
with the bound as its interval). Without it, the callers left when an overload
ends were served newest first after waiting up to the whole bound (200 ms and
more at 81 ms unloaded), and set the p99 of admitted calls."""


def wait_bound(max_wait: float, standing_for: float, reference: float) -> float:
    """
    How long a queued caller may have waited and still be served. Pure.

    Args:
        max_wait: The wait bound in seconds (``inf`` = none).
        standing_for: Seconds the queue has been non-empty without a break
            (0 when it is empty).
        reference: The reference latency in seconds (NaN = not measured yet).

    Returns:
        *max_wait* while the queue has been standing for at most *max_wait*
        (a burst drains within it); after that the smaller of *max_wait* and
        :data:`STANDING_WAIT_REFERENCE` reference latencies. Always *max_wait*
        without a bound or before a reference is measured.
    """
    if math.isinf(max_wait) or math.isnan(reference) or not standing_for > max_wait:
        return max_wait  # (a NaN standing_for, no queue, is not standing)
    return min(max_wait, STANDING_WAIT_REFERENCE * reference)


def lifo_after(max_wait: float, reference: float) -> float:
    """
    How long the oldest waiter may wait before the newest is served first. Pure.

    Args:
        max_wait: The wait bound in seconds (``inf`` = none).
        reference: The reference (minimum) latency in seconds; NaN before one is
            measured.

    Returns:
        ``inf`` without a wait bound (always FIFO); otherwise half the bound, or
        :data:`LIFO_AFTER_REFERENCE` reference latencies if that is sooner.
    """
    if math.isinf(max_wait):
        return math.inf
    half = max_wait / 2.0
    if math.isnan(reference):
        return half
    return min(half, LIFO_AFTER_REFERENCE * reference)


def serve_newest(oldest_wait: float, max_wait: float, reference: float = math.nan) -> bool:
    """
    Whether the next free slot goes to the newest waiter rather than the oldest. Pure.

    FIFO while the queue drains in time; once the oldest caller has waited longer
    than :func:`lifo_after` the queue is not keeping up (overload), and the newest
    caller is served instead (adaptive LIFO): a call admitted then has waited
    little, so the admitted calls keep about their unloaded latency, while callers
    that could only have been served late reach their wait bound and are refused.
    Without a wait bound (``inf``) the queue is always FIFO.

    Args:
        oldest_wait: Seconds the oldest waiter has waited.
        max_wait: The wait bound in seconds (``inf`` = none).
        reference: The reference latency in seconds (NaN = not measured yet).

    Returns:
        ``True`` for LIFO.
    """
    return oldest_wait > lifo_after(max_wait, reference)
