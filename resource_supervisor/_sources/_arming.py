"""
Pure rules for arming the kernel's memory notifications.

Covers: the usage thresholds armed through cgroup v1 ``cgroup.event_control``
(:func:`threshold_bytes`, one per pressure level of the effective limit, and
:func:`thresholds_to_rearm`, which says when a changed limit or changed levels call
for re-arming), the PSI trigger lines written to ``memory.pressure`` or
``/proc/pressure/memory`` (:class:`PsiTrigger`, with the fallback an opener without
``CAP_SYS_RESOURCE`` needs: windows in whole multiples of 2 s), the parser of cgroup
v2 ``memory.events`` (:func:`parse_memory_events`) and the counters whose rise is
pressure (:func:`pressure_events`), and the rate limit of notification samples
(:func:`next_sample_at`). No I/O, clock or await here.

Does not cover: opening descriptors or waiting on them (:mod:`._notify`), grading
pressure (:mod:`.._policy`), or the sampling loop (:mod:`.._supervisor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = (
    "MIN_NOTIFIED_SAMPLE_GAP_SECONDS",
    "PRESSURE_EVENT_KEYS",
    "PSI_UNPRIVILEGED_WINDOW_US",
    "PSI_WINDOW_MAX_US",
    "PSI_WINDOW_MIN_US",
    "REARM_TOLERANCE_BYTES",
    "PsiTrigger",
    "next_sample_at",
    "parse_memory_events",
    "pressure_events",
    "threshold_bytes",
    "thresholds_to_rearm",
)

#: At most one extra sample per this many seconds, however often the kernel notifies:
#: a storm of threshold crossings around one mark costs at most 100 samples a second.
MIN_NOTIFIED_SAMPLE_GAP_SECONDS: Final = 0.01

#: The kernel accepts PSI trigger windows from 500 ms to 10 s (kernel/sched/psi.c).
PSI_WINDOW_MIN_US: Final = 500_000
PSI_WINDOW_MAX_US: Final = 10_000_000
#: An opener without CAP_SYS_RESOURCE may only use windows in multiples of 2 s
#: (kernel 6.5+); the write fails with EINVAL otherwise.
PSI_UNPRIVILEGED_WINDOW_US: Final = 2_000_000

#: ``memory.events`` counters whose rise means the cgroup is at or past a limit:
#: ``high`` (throttled at memory.high), ``max`` (hit memory.max and reclaimed),
#: ``oom`` and ``oom_kill``. ``low`` is protection, not pressure.
PRESSURE_EVENT_KEYS: Final = ("high", "max", "oom", "oom_kill")


#: Marks that moved less than this are kept: the kernel checks v1 thresholds only
#: every 128 page events per CPU (512 KiB with 4 KiB pages), so finer moves gain
#: nothing and would re-arm on every sample.
REARM_TOLERANCE_BYTES: Final = 256 * 1024


def threshold_bytes(
    limit_bytes: int, percents: Iterable[float], cache_bytes: int = 0
) -> tuple[int, ...]:
    """
    The usage marks to arm for *limit_bytes*: one per percent, rounded up to a byte.

    The levels are graded on the working set (usage minus inactive file cache), the
    kernel compares the marks with usage: each mark is the working-set level plus
    *cache_bytes*, the inactive file cache of the last sample, so that usage crosses
    it when the working set crosses the level. Marks at or above the limit (usage
    never exceeds it) and at or below zero are left out; duplicates collapse.

    Args:
        limit_bytes: The effective memory limit.
        percents: The levels, in percent of the limit (warning and aggressive).
        cache_bytes: Usage minus working set at the last sample (negative counts as 0).

    Returns:
        The marks in bytes, ascending.
    """
    if limit_bytes <= 0:
        return ()
    offset = max(0, cache_bytes)
    marks = {math.ceil(limit_bytes * percent / 100.0) + offset for percent in percents}
    return tuple(sorted(mark for mark in marks if 0 < mark < limit_bytes))


def thresholds_to_rearm(
    armed: tuple[int, ...] | None,
    wanted: tuple[int, ...],
    tolerance: int = REARM_TOLERANCE_BYTES,
) -> bool:
    """
    Whether the armed thresholds must be replaced by *wanted*.

    Cases: nothing armed yet (``None``) and something wanted -> arm; a different
    number of marks, or a mark moved by more than *tolerance* (the limit, the levels
    or the file cache changed) -> re-arm; otherwise keep them.

    Args:
        armed: The marks armed now, ``None`` when none ever were.
        wanted: The marks for the current limit, levels and cache.
        tolerance: Bytes a mark may move without re-arming.

    Returns:
        ``True`` when the old marks must go and *wanted* be armed.
    """
    if armed is None:
        return bool(wanted)
    if len(armed) != len(wanted):
        return True
    return any(abs(old - new) > tolerance for old, new in zip(armed, wanted, strict=True))


@dataclass(frozen=True, slots=True)
class PsiTrigger:
    """
    A PSI trigger: notify when tasks stall on memory for *stall_us* within any
    *window_us* (``some``: at least one task stalled; ``full``: all at once).
    """

    kind: Literal["some", "full"]
    stall_us: int
    window_us: int

    def __post_init__(self) -> None:
        if self.kind not in ("some", "full"):
            raise ValueError(f"PSI trigger kind must be 'some' or 'full', got {self.kind!r}")
        if not PSI_WINDOW_MIN_US <= self.window_us <= PSI_WINDOW_MAX_US:
            raise ValueError(
                f"PSI trigger window must be {PSI_WINDOW_MIN_US}-{PSI_WINDOW_MAX_US} us,"
                f" got {self.window_us}"
            )
        if not 0 < self.stall_us <= self.window_us:
            raise ValueError(
                f"PSI trigger stall must be in (0, window], got {self.stall_us} of {self.window_us}"
            )

    def line(self) -> bytes:
        """
        The bytes to write: the kernel replaces the last byte with a NUL, so the line
        ends in one (without it, the last digit of the window would be lost).
        """
        return f"{self.kind} {self.stall_us} {self.window_us}\0".encode("ascii")

    def candidates(self) -> tuple[PsiTrigger, ...]:
        """
        This trigger, then the one an unprivileged opener may arm: the window rounded
        up to a multiple of 2 s (within the kernel's maximum), the stall scaled with
        it so the same share of the window counts. A window already a multiple of
        2 s has no second candidate.
        """
        if self.window_us % PSI_UNPRIVILEGED_WINDOW_US == 0:
            return (self,)
        steps = math.ceil(self.window_us / PSI_UNPRIVILEGED_WINDOW_US)
        window = min(PSI_WINDOW_MAX_US, steps * PSI_UNPRIVILEGED_WINDOW_US)
        stall = min(window, math.ceil(self.stall_us * window / self.window_us))
        return (self, PsiTrigger(self.kind, stall, window))


def parse_memory_events(data: bytes | str) -> dict[str, int]:
    """
    Parse cgroup v2 ``memory.events`` (``key value`` per line).

    Args:
        data: The file's content.

    Returns:
        Counter name to value; malformed lines are skipped.
    """
    text = data.decode("ascii", errors="replace") if isinstance(data, bytes) else data
    counters: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            counters[key] = int(value)
        except ValueError:
            continue
    return counters


def pressure_events(before: Mapping[str, int], after: Mapping[str, int]) -> tuple[str, ...]:
    """
    The pressure counters (:data:`PRESSURE_EVENT_KEYS`) that rose from *before* to
    *after*; a counter absent before counts from zero.

    Args:
        before: Counters of the previous read.
        after: Counters now.

    Returns:
        The names of the counters that rose, in :data:`PRESSURE_EVENT_KEYS` order.
    """
    return tuple(key for key in PRESSURE_EVENT_KEYS if after.get(key, 0) > before.get(key, 0))


def next_sample_at(
    last_sample_at: float | None,
    now: float,
    min_gap: float = MIN_NOTIFIED_SAMPLE_GAP_SECONDS,
) -> float:
    """
    When a notified sample may run: now, unless the last sample was under *min_gap*
    ago, then *min_gap* after it.

    Args:
        last_sample_at: When the last sample started (same clock), ``None`` if never.
        now: The current time.
        min_gap: The shortest gap between samples that notifications may cause.

    Returns:
        The earliest time for the sample, at least *now*.
    """
    if last_sample_at is None:
        return now
    return max(now, last_sample_at + min_gap)
