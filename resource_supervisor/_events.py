"""
Events published by a supervisor beside its snapshots, for integrations.

Covers: the event value types (:class:`LevelChanged`, :class:`CpuWarning`,
:class:`CleanupCompleted`). Does not cover: publishing (:mod:`._supervisor`) or
buffering (:mod:`._streams`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ._cleanup import CleanupReport
    from ._snapshot import MetricsSnapshot, PressureLevel

__all__ = ("CleanupCompleted", "CpuWarning", "LevelChanged", "SupervisorEvent")


@dataclass(frozen=True, slots=True)
class LevelChanged:
    """The pressure level moved; *resource* (and *device*) caused the new level."""

    previous: PressureLevel
    level: PressureLevel
    snapshot: MetricsSnapshot
    resource: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class CpuWarning:
    """System CPU reached ``warning_threshold_cpu`` (logged once per streak; no cleanup)."""

    cpu_percent: float
    threshold: float
    snapshot: MetricsSnapshot


@dataclass(frozen=True, slots=True)
class CleanupCompleted:
    """A cleanup pass finished; the report lists every handler's outcome."""

    report: CleanupReport
    automatic: bool


SupervisorEvent: TypeAlias = LevelChanged | CpuWarning | CleanupCompleted
"""Any event the supervisor publishes: a level change, a CPU warning or a finished cleanup."""
