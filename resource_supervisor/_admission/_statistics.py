"""
:class:`AdmissionStatistics`: what ``sup.admission.statistics()`` returns, the
limiter's state at one moment. Pure data; filled by :mod:`._limiter`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("AdmissionStatistics",)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """
    The limiter's state at one moment.

    Attributes:
        limit: Calls admitted at once now (the floor of the adaptive limit).
        in_flight: Calls holding a slot.
        queued: Calls waiting for one.
        queue_limit: The most calls that may wait.
        admitted_total: Calls that got a slot.
        rejected_total: Calls refused (queue full, or waited too long).
        timed_out_total: Of those, calls that waited past the queue timeout.
        latency_short_seconds: Mean latency of the last window (NaN before any).
        latency_long_seconds: Long-run average latency (NaN before any).
        latency_min_seconds: The reference: the latency the last probe measured
            at the floor (NaN before any).
        drain_per_second: Completions per second, smoothed (NaN before any).
        probing: Whether the limit is pinned at its floor to re-measure the minimum.
        pressure_reasons: What tightened the limit at the last sample.
    """

    limit: int
    in_flight: int
    queued: int
    queue_limit: int
    admitted_total: int
    rejected_total: int
    timed_out_total: int
    latency_short_seconds: float
    latency_long_seconds: float
    latency_min_seconds: float
    drain_per_second: float
    probing: bool
    pressure_reasons: tuple[str, ...]
