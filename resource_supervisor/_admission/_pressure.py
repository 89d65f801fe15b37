"""
How memory pressure, CPU saturation and the process lane tighten the admission limit.

Covers: :class:`PressureInputs`, :class:`PressureParams` and
:func:`pressure_adjustment`, the one pure rule that combines them into a
:class:`PressureAdjustment` (a factor for the limit and whether it may grow), also
offered as :func:`adjustment_for` (the inputs one by one, for the per-sample path).
Does not cover: how the inputs are measured (the snapshot, :mod:`._cpu_stat`) or
how the factor is applied (:func:`._limit.tightened`, :mod:`._limiter`).

The cases, most severe first; the most restrictive wins:

* CRITICAL memory pressure: the limit drops to its floor and stays there while
  CRITICAL holds (every admitted call allocates; the memory budget comes first).
* CPU saturation (process CPU at or above ``cpu_saturation_percent`` of the usable
  CPUs) or cgroup throttling (at least ``throttled_percent`` of the quota periods
  throttled since the previous sample): the limit is multiplied by ``cpu_backoff``
  and may not grow until the next sample. More concurrency cannot add throughput
  on a saturated CPU, only latency.
* A backlog in the process lane (more calls queued than it has workers): the
  limit is scaled by ``workers / queued`` (not below one half) and may not grow:
  admitted requests would only wait for a worker.
* WARNING memory pressure: the limit may not grow.

Applied once per sample, the CPU and lane factors compound while the condition
lasts and stop as soon as it clears (the latency gradient then grows the limit back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._snapshot import PressureLevel

__all__ = (
    "NO_ADJUSTMENT",
    "PressureAdjustment",
    "PressureInputs",
    "PressureParams",
    "adjustment_for",
    "pressure_adjustment",
)

_MIN_LANE_FACTOR = 0.5


@dataclass(frozen=True, slots=True)
class PressureInputs:
    """
    What the pressure rule looks at, from one snapshot.

    Attributes:
        level: The memory pressure level.
        cpu_percent: Process CPU as a percent of the usable CPUs (NaN if unknown).
        throttled_ratio: Share of cgroup quota periods throttled since the last
            sample, ``0..1`` (NaN if unknown).
        lane_queued: Calls waiting in the process lane.
        lane_workers: The process lane's worker target.
    """

    level: PressureLevel = PressureLevel.NORMAL
    cpu_percent: float = math.nan
    throttled_ratio: float = math.nan
    lane_queued: int = 0
    lane_workers: int = 0


@dataclass(frozen=True, slots=True)
class PressureParams:
    """
    Thresholds of the pressure rule; ``None`` turns an input off.

    Attributes:
        cpu_saturation_percent: Process CPU (percent of the usable CPUs) that
            counts as saturated.
        throttled_percent: Percent of quota periods throttled that counts as
            saturated.
        cpu_backoff: Factor applied per saturated sample (``0 < f < 1``).
    """

    cpu_saturation_percent: float | None = 95.0
    throttled_percent: float | None = 5.0
    cpu_backoff: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 < self.cpu_backoff < 1.0:
            raise ValueError(f"cpu_backoff must lie in (0, 1), got {self.cpu_backoff}")


@dataclass(frozen=True, slots=True)
class PressureAdjustment:
    """
    What one sample asks of the limit.

    Attributes:
        factor: Multiply the limit by this (``0`` = drop to the floor, ``1`` = keep).
        hold: Whether the limit may not grow until the next sample.
        reasons: The inputs that asked for it (``"memory"``, ``"cpu"``,
            ``"cpu_throttling"``, ``"process_lane"``), in that order.
    """

    factor: float = 1.0
    hold: bool = False
    reasons: tuple[str, ...] = ()


NO_ADJUSTMENT = PressureAdjustment()
"""Nothing to tighten."""


def pressure_adjustment(inputs: PressureInputs, params: PressureParams) -> PressureAdjustment:
    """
    Combine the inputs into one adjustment. Pure.

    Args:
        inputs: The readings of one sample.
        params: The thresholds.

    Returns:
        The adjustment: factor in ``[0, 1]``, ``hold`` whenever the factor is below
        1 or memory pressure is at least WARNING.
    """
    i = inputs
    return adjustment_for(
        i.level, i.cpu_percent, i.throttled_ratio, i.lane_queued, i.lane_workers, params
    )


def adjustment_for(
    level: int,
    cpu_percent: float,
    throttled_ratio: float,
    lane_queued: int,
    lane_workers: int,
    params: PressureParams,
) -> PressureAdjustment:
    """
    :func:`pressure_adjustment` of the inputs given one by one (the limiter's per-sample
    path builds no :class:`PressureInputs`). Pure.

    Returns:
        The adjustment; :data:`NO_ADJUSTMENT` itself when nothing tightens or holds.
    """
    if level >= PressureLevel.CRITICAL:
        return PressureAdjustment(0.0, hold=True, reasons=("memory",))
    factor = 1.0
    reasons: list[str] = []
    if level >= PressureLevel.WARNING:
        reasons.append("memory")
    saturation = params.cpu_saturation_percent
    if saturation is not None and cpu_percent >= saturation:  # NaN compares False
        factor = min(factor, params.cpu_backoff)
        reasons.append("cpu")
    throttled = params.throttled_percent
    if throttled is not None and throttled_ratio * 100.0 >= throttled:
        factor = min(factor, params.cpu_backoff)
        reasons.append("cpu_throttling")
    if lane_workers > 0 and lane_queued > lane_workers:
        factor = min(factor, max(_MIN_LANE_FACTOR, lane_workers / lane_queued))
        reasons.append("process_lane")
    if not reasons:  # the common case: factor 1, no hold
        return NO_ADJUSTMENT
    return PressureAdjustment(factor, hold=True, reasons=tuple(reasons))
