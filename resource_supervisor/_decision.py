"""
What the supervisor does after a sample, decided in pure code.

Covers: :func:`decide`, which turns what the supervisor remembers
(:class:`PolicyState`), this sample's readings (:class:`Readings`) and the time into a
:class:`Decision`: the new pressure levels (with hysteresis, :func:`._policy.grade`),
the level transition to publish, the CPU warning to publish or the recovery to log,
and the automatic cleanup to start; and :func:`readings_from` (or a
:class:`ReadingRules` built once), which picks the readings out of a sample's
metrics. Everything here is pure: no I/O, no clock, no await; the supervisor
gathers, calls :func:`decide`, and acts on the result.

Does not cover: grading one reading (:mod:`._policy`), building the snapshot and
the events (:mod:`._supervisor`), or running the handlers (:mod:`._cleanup`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._gpu import gpu_readings
from ._policy import CleanupKind, Reading, Thresholds, cleanup_due, grade
from ._snapshot import PressureLevel

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._config import SupervisorSettings
    from ._snapshot import MetricValue

__all__ = (
    "CleanupPlan",
    "CpuAlert",
    "CpuRecovery",
    "Decision",
    "LevelTransition",
    "PolicyState",
    "ReadingRules",
    "Readings",
    "decide",
    "readings_from",
)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """
    What :func:`decide` remembers between samples, and its fixed rules.

    Attributes:
        cooldown: Seconds between automatic cleanups while a level holds or falls.
        cpu_threshold: System CPU percent at or above which a warning is published.
        levels: Each resource's level after the previous sample (its hysteresis state).
        level: The overall level after the previous sample.
        last_cleanup_at: When the last automatic cleanup started (``None``: never).
        cpu_high: Whether the previous sample was at or above ``cpu_threshold``.
    """

    cooldown: float
    cpu_threshold: float
    levels: Mapping[str, PressureLevel] = field(default_factory=dict)
    level: PressureLevel = PressureLevel.NORMAL
    last_cleanup_at: float | None = None
    cpu_high: bool = False


@dataclass(frozen=True, slots=True)
class Readings:
    """
    This sample's evidence.

    Attributes:
        pressure: One reading per graded resource (memory, PSI, each GPU).
        cpu_percent: System CPU percent (NaN when unknown: no warning, no recovery).
        cleanup_running: The most aggressive automatic cleanup still running, if any.
    """

    pressure: tuple[Reading, ...]
    cpu_percent: float = math.nan
    cleanup_running: CleanupKind | None = None


@dataclass(frozen=True, slots=True)
class LevelTransition:
    """The overall level changed: publish a ``LevelChanged`` event and log it."""

    previous: PressureLevel
    level: PressureLevel
    resource: str | None
    device: str | None


@dataclass(frozen=True, slots=True)
class CpuAlert:
    """System CPU is at or above the threshold: publish a ``CpuWarning``; log when ``first``."""

    cpu_percent: float
    threshold: float
    first: bool


@dataclass(frozen=True, slots=True)
class CpuRecovery:
    """System CPU fell back below the threshold: log it (no event)."""

    cpu_percent: float
    threshold: float


@dataclass(frozen=True, slots=True)
class CleanupPlan:
    """An automatic cleanup to start now."""

    aggressive: bool
    level: PressureLevel
    reason: str
    resource: str
    device: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """
    The result of :func:`decide`.

    Attributes:
        state: The state to pass to the next :func:`decide` when :attr:`cleanup`
            (if any) is started.
        level: The new overall level.
        transition: Set exactly when the overall level changed.
        cpu: A warning to publish, a recovery to log, or nothing.
        cleanup: The automatic cleanup to start, or ``None``.
    """

    state: PolicyState
    level: PressureLevel
    transition: LevelTransition | None
    cpu: CpuAlert | CpuRecovery | None
    cleanup: CleanupPlan | None
    _previous_cleanup_at: float | None = None

    @property
    def events(self) -> tuple[LevelTransition | CpuAlert, ...]:
        """What to publish, in order: the transition, then the CPU warning."""
        out: list[LevelTransition | CpuAlert] = []
        if self.transition is not None:
            out.append(self.transition)
        if isinstance(self.cpu, CpuAlert):
            out.append(self.cpu)
        return tuple(out)

    def cleanup_not_started(self) -> PolicyState:
        """The state to keep when :attr:`cleanup` was not started (its cooldown not begun)."""
        return dataclasses.replace(self.state, last_cleanup_at=self._previous_cleanup_at)


def decide(state: PolicyState, readings: Readings, now: float) -> Decision:
    """
    Decide levels, events and cleanup for one sample. Pure and deterministic.

    Levels move per resource with hysteresis (:func:`._policy.grade`); the overall
    level is the worst. A transition is reported exactly when the overall level
    changed. A cleanup is decided as :func:`._policy.cleanup_due` says (at once when
    the level rose, else once the cooldown has passed), but never while an
    automatic cleanup at least as aggressive is still running: it would only join
    that pass. The CPU warning repeats on every sample at or above the threshold;
    the first of a streak is marked for logging, and leaving the streak is a
    recovery.

    Args:
        state: The state returned by the previous call (or a fresh one).
        readings: This sample's readings.
        now: Monotonic time of this sample.

    Returns:
        The decision, carrying the next state.
    """
    graded = grade(state.levels, list(readings.pressure))
    previous = state.level
    trigger = graded.trigger
    transition = None
    if graded.level != previous:
        transition = LevelTransition(
            previous,
            graded.level,
            trigger.resource if trigger else None,
            trigger.device if trigger else None,
        )

    cpu: CpuAlert | CpuRecovery | None = None
    cpu_high = state.cpu_high
    value = readings.cpu_percent
    if not math.isnan(value) and value >= state.cpu_threshold:
        cpu = CpuAlert(value, state.cpu_threshold, first=not cpu_high)
        cpu_high = True
    elif cpu_high:
        cpu = CpuRecovery(value, state.cpu_threshold)
        cpu_high = False

    kind = cleanup_due(
        previous,
        graded.level,
        now=now,
        last_cleanup_at=state.last_cleanup_at,
        cooldown=state.cooldown,
    )
    running = readings.cleanup_running
    if kind is not None and running is not None and (kind == "normal" or running == kind):
        kind = None
    plan = None
    last_cleanup_at = state.last_cleanup_at
    if kind is not None:
        resource = trigger.resource if trigger else "memory"
        plan = CleanupPlan(
            aggressive=kind == "aggressive",
            level=graded.level,
            reason=f"{resource} pressure {graded.level.name}",
            resource=resource,
            device=trigger.device if trigger else None,
        )
        last_cleanup_at = now
    if (
        graded.level is previous
        and cpu_high is state.cpu_high
        and last_cleanup_at is state.last_cleanup_at
        and graded.levels == state.levels
    ):
        new_state = state  # the usual sample: nothing to remember anew (it is frozen)
    else:
        # Built field by field: dataclasses.replace() costs five times as much per sample.
        new_state = PolicyState(
            state.cooldown,
            state.cpu_threshold,
            graded.levels,
            graded.level,
            last_cleanup_at,
            cpu_high,
        )
    return Decision(new_state, graded.level, transition, cpu, plan, state.last_cleanup_at)


def readings_from(
    data: Mapping[str, MetricValue],
    settings: SupervisorSettings,
    *,
    cleanup_running: CleanupKind | None = None,
) -> Readings:
    """
    Pick the graded readings out of a sample's metrics. Pure.

    Memory is always graded; PSI only when its threshold is set and the sample has
    it; each GPU device when the sample has its figures.

    Args:
        data: The sample's metrics (``memory_percent`` required).
        settings: Thresholds and hysteresis.
        cleanup_running: Passed through to :attr:`Readings.cleanup_running`.
    """
    return ReadingRules(settings).readings(data, cleanup_running=cleanup_running)


class ReadingRules:
    """
    :func:`readings_from` with its thresholds built once from the settings (the
    supervisor keeps one: a sample builds only its readings).

    Args:
        settings: Thresholds and hysteresis.
    """

    __slots__ = ("_gpu", "_memory", "_psi", "_psi_full")

    def __init__(self, settings: SupervisorSettings) -> None:
        s = settings
        self._memory = Thresholds(
            s.warning_threshold_memory, s.aggressive_threshold_memory, s.hysteresis
        )
        some, full = s.psi_warning_some_avg10, s.psi_critical_full_avg10
        self._psi = None if some is None else Thresholds(some, None, s.hysteresis)
        self._psi_full = None if full is None else Thresholds(None, full, s.hysteresis)
        self._gpu = (
            s.warning_threshold_gpu_memory,
            s.aggressive_threshold_gpu_memory,
            s.hysteresis,
        )

    def readings(
        self, data: Mapping[str, MetricValue], *, cleanup_running: CleanupKind | None = None
    ) -> Readings:
        """:func:`readings_from` with these settings' thresholds. Pure."""
        pressure = [Reading("memory", float(data["memory_percent"]), self._memory)]
        if self._psi is not None and "psi_memory_some_avg10" in data:
            pressure.append(Reading("psi", float(data["psi_memory_some_avg10"]), self._psi))
        if self._psi_full is not None and "psi_memory_full_avg10" in data:
            pressure.append(
                Reading("psi_full", float(data["psi_memory_full_avg10"]), self._psi_full)
            )
        warning, critical, hysteresis = self._gpu
        pressure.extend(
            gpu_readings(data, warning=warning, critical=critical, hysteresis=hysteresis)
        )
        cpu = data.get("system_cpu_percent", math.nan)
        return Readings(
            tuple(pressure),
            cpu_percent=float(cpu) if isinstance(cpu, int | float) else math.nan,
            cleanup_running=cleanup_running,
        )
