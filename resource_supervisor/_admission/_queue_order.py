"""
The order of the admission queue: FIFO while it drains in time, newest first once it
does not (adaptive LIFO). Pure; used by :mod:`._limiter`.
"""

from __future__ import annotations

__all__ = ("serve_newest",)


def serve_newest(oldest_wait: float, max_wait: float) -> bool:
    """
    Whether the next free slot goes to the newest waiter rather than the oldest. Pure.

    FIFO while the queue drains in time; once the oldest caller has waited more
    than half of *max_wait* the queue is not keeping up (overload), and the newest
    caller is served instead (adaptive LIFO): a call admitted then has waited
    little, so the admitted calls keep about their unloaded latency, while callers
    that could only have been served late reach their wait bound and are refused.
    Without a wait bound (``inf``) the queue is always FIFO.

    Args:
        oldest_wait: Seconds the oldest waiter has waited.
        max_wait: The wait bound in seconds (``inf`` = none).

    Returns:
        ``True`` for LIFO.
    """
    return oldest_wait * 2.0 > max_wait
