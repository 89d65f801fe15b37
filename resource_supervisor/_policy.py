"""
Pure pressure policy: readings -> :class:`PressureLevel`, with hysteresis and cooldown.

Covers: grading one reading against its thresholds (:func:`next_level`), grading
several resources at once, each with its own remembered level (:func:`grade`), and
deciding when cleanup runs (:func:`cleanup_due`). Everything here is pure: no I/O,
no clock, no await; callers pass ``now``.

Does not cover: reading the metrics (:mod:`._sampler`) or running handlers
(:mod:`._cleanup`). See also :mod:`.broker._local._sizing` for the worker-count policy.

The hysteresis cycle, for warning 75 / critical 85 / hysteresis 5::

    NORMAL --(>=75)--> WARNING --(>=85)--> CRITICAL
    NORMAL <--(<70)--- WARNING <--(<80)--- CRITICAL
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = (
    "CleanupKind",
    "Grade",
    "Reading",
    "Thresholds",
    "cleanup_due",
    "grade",
    "next_level",
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """
    Where a resource enters WARNING and CRITICAL, and how far below it must fall to leave.

    ``None`` disables a level for this resource. Units are the reading's (percent).
    """

    warning: float | None
    critical: float | None
    hysteresis: float = 0.0

    def enter(self, level: PressureLevel) -> float:
        """The reading at which *level* is entered (``inf`` when disabled)."""
        mark = self.warning if level == PressureLevel.WARNING else self.critical
        return math.inf if mark is None else mark

    def leave(self, level: PressureLevel) -> float:
        """Below this reading *level* is left."""
        return self.enter(level) - self.hysteresis


def next_level(current: PressureLevel, value: float, thresholds: Thresholds) -> PressureLevel:
    """
    Return the level for *value* given the *current* level of the same resource.

    A level at or below *current* holds until *value* drops below its leave mark;
    a higher level is entered once *value* reaches its enter mark. NaN readings
    keep the current level (a failed read is no evidence either way).

    Args:
        current: The level this resource had after the previous reading.
        value: The new reading, in the thresholds' unit.
        thresholds: Enter marks and hysteresis.

    Returns:
        The new level for this resource.
    """
    if math.isnan(value):
        return current
    result = PressureLevel.NORMAL
    for level in (PressureLevel.WARNING, PressureLevel.CRITICAL):
        mark = thresholds.leave(level) if level <= current else thresholds.enter(level)
        if value >= mark:
            result = level
    return result


@dataclass(frozen=True, slots=True)
class Reading:
    """One resource's value and its thresholds, e.g. ``memory`` at 81.5 %."""

    resource: str
    value: float
    thresholds: Thresholds
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Grade:
    """The result of :func:`grade`: overall level, per-resource levels, the worst reading."""

    level: PressureLevel
    levels: Mapping[str, PressureLevel] = field(default_factory=dict)
    trigger: Reading | None = None


def grade(previous: Mapping[str, PressureLevel], readings: list[Reading]) -> Grade:
    """
    Grade every reading against its own previous level; the overall level is the worst.

    Each resource keeps its own hysteresis state (keyed by ``resource`` and
    ``device``), so one resource leaving its band never drags another across.

    Args:
        previous: ``Grade.levels`` from the previous call (empty at start).
        readings: This sample's readings.

    Returns:
        The overall level, the per-resource levels to pass next time, and the
        reading responsible for the overall level (``None`` when NORMAL).
    """
    levels: dict[str, PressureLevel] = {}
    worst = PressureLevel.NORMAL
    trigger: Reading | None = None
    for reading in readings:
        key = reading.resource if reading.device is None else f"{reading.resource}:{reading.device}"
        level = next_level(
            previous.get(key, PressureLevel.NORMAL), reading.value, reading.thresholds
        )
        levels[key] = level
        if level > worst:
            worst, trigger = level, reading
    return Grade(worst, levels, trigger)


CleanupKind = Literal["normal", "aggressive"]


def cleanup_due(
    previous: PressureLevel,
    level: PressureLevel,
    *,
    now: float,
    last_cleanup_at: float | None,
    cooldown: float,
) -> CleanupKind | None:
    """
    Decide whether the pressure change (or its persistence) calls for cleanup now.

    Cases, in order:

    * NORMAL: never.
    * The level rose (NORMAL -> WARNING, or into CRITICAL): at once.
    * The level held or fell but is still elevated: once the cooldown has passed
      since the last cleanup.

    Args:
        previous: The level after the previous sample.
        level: The level after this sample.
        now: Monotonic time of this sample.
        last_cleanup_at: Monotonic time the last automatic cleanup started.
        cooldown: Seconds between repeats while a level holds.

    Returns:
        ``"aggressive"`` at CRITICAL, ``"normal"`` at WARNING, or ``None``.
    """
    if level == PressureLevel.NORMAL:
        return None
    kind: CleanupKind = "aggressive" if level == PressureLevel.CRITICAL else "normal"
    if level > previous:
        return kind
    if last_cleanup_at is None or now - last_cleanup_at >= cooldown:
        return kind
    return None
