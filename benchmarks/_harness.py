"""
The benchmark harness: interleaved rounds, per-round ratios, and result records.

Covers: :class:`Case` (one contender, measured once per round), :func:`compare`
(runs every case once per round, in a rotated order, so that drift of a noisy
machine hits every contender alike; then the median and minimum of each case and
the ratio to the baseline *per round*), :class:`Target` (a BASELINES.md goal,
checked against the median), :class:`SuiteContext` (what a suite module is given),
and helpers that time async calls (:func:`time_sequential`, :func:`time_concurrent`).

Does not cover: writing files or plots (:mod:`benchmarks._report`), choosing which
suites run (:mod:`benchmarks.__main__`), or the suites themselves.

Absolute times are not comparable between runs on shared machines; ratios
measured side by side in one run are. That is why every comparison reports the
ratio of each round, never a ratio of two medians taken at different times.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

__all__ = (
    "Case",
    "CaseStats",
    "Comparison",
    "Curve",
    "Panel",
    "SkipSuite",
    "SuiteContext",
    "SuiteResult",
    "Target",
    "TargetCheck",
    "Timeline",
    "Track",
    "compare",
    "concurrent_case",
    "median_ratio",
    "per_round_ratios",
    "percentile",
    "sequential_case",
    "time_concurrent",
    "time_sequential",
)

Status = Literal["ok", "skipped", "failed"]
N = TypeVar("N", int, float)


class SkipSuite(Exception):  # noqa: N818 - a flow signal, not an error
    """Raised by a suite when a part it needs is missing; the run records the reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class Case:
    """
    One contender of a comparison.

    Attributes:
        name: Shown in tables and plots.
        measure: Runs the contender once and returns its figure for this round
            (lower is better, in the comparison's unit).
    """

    name: str
    measure: Callable[[], Awaitable[float]]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """
    A goal from BASELINES.md, checked on the median.

    Exactly one of *max_ratio*, *min_speedup* and *max_value* is set.

    Attributes:
        text: The goal as written in BASELINES.md.
        case: The case it is about.
        baseline: The case it is compared with (for ratio goals).
        max_ratio: Met when median(case / baseline per round) <= this.
        min_speedup: Met when median(baseline / case per round) >= this.
        max_value: Met when the case's median <= this (absolute, in the unit).
    """

    text: str
    case: str
    baseline: str | None = None
    max_ratio: float | None = None
    min_speedup: float | None = None
    max_value: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TargetCheck:
    """A :class:`Target` and what this run measured for it."""

    text: str
    measured: float
    limit: float
    kind: Literal["ratio", "speedup", "value"]
    met: bool
    unit: str


@dataclasses.dataclass(frozen=True, slots=True)
class CaseStats:
    """The figures of one case over every round."""

    name: str
    values: tuple[float, ...]
    median: float
    min: float
    ratios: tuple[float, ...]
    """case / baseline for each round (1.0 for the baseline itself)."""
    ratio_median: float
    ratio_min: float


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    """The outcome of :func:`compare`."""

    name: str
    unit: str
    baseline: str
    rounds: int
    cases: tuple[CaseStats, ...]
    targets: tuple[TargetCheck, ...]
    note: str = ""

    def case(self, name: str) -> CaseStats:
        """Return the stats of the case called *name*."""
        for stats in self.cases:
            if stats.name == name:
                return stats
        raise KeyError(name)


@dataclasses.dataclass(frozen=True, slots=True)
class Curve:
    """An x/y series for a line plot (for example overhead against task length)."""

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    x_label: str
    y_label: str
    log_x: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Track:
    """One line of a :class:`Panel`: values over time."""

    name: str
    t: tuple[float, ...]
    y: tuple[float, ...]
    step: bool = False
    """Draw as a step function (levels, worker counts) rather than a line."""
    points: bool = False
    """Draw as separate markers with stems (events with a size, such as bytes freed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Panel:
    """
    One stacked panel of a :class:`Timeline`.

    Attributes:
        y_label: The panel's axis label, with its unit.
        tracks: Its lines.
        references: Horizontal reference lines as (label, value), e.g. a limit.
        y_ticks: Named ticks as (value, label), e.g. pressure levels.
    """

    y_label: str
    tracks: tuple[Track, ...]
    references: tuple[tuple[str, float], ...] = ()
    y_ticks: tuple[tuple[float, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Timeline:
    """
    A run over time: stacked panels sharing the time axis, with marked events.

    Attributes:
        title: States the workload.
        panels: Top to bottom.
        events: Vertical markers as (time, label), e.g. cleanups with bytes freed.
        x_label: The shared time axis.
    """

    title: str
    panels: tuple[Panel, ...]
    events: tuple[tuple[float, str], ...] = ()
    x_label: str = "time since the workload started (s)"


@dataclasses.dataclass(slots=True)
class SuiteResult:
    """Everything one suite produced."""

    name: str
    status: Status = "ok"
    reason: str = ""
    seconds: float = 0.0
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[str]]]] = dataclasses.field(default_factory=list)
    curves: list[Curve] = dataclasses.field(default_factory=list)
    timelines: list[Timeline] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """
    Return the *q*-th percentile (0-100) of *values* by linear interpolation.

    Raises:
        ValueError: If *values* is empty.
    """
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def per_round_ratios(values: Sequence[float], baseline: Sequence[float]) -> tuple[float, ...]:
    """
    Return ``values[i] / baseline[i]`` for each round (``inf`` where the baseline is 0).

    Raises:
        ValueError: If the two series differ in length.
    """
    if len(values) != len(baseline):
        raise ValueError("one value per round is needed on both sides")
    return tuple(v / b if b else float("inf") for v, b in zip(values, baseline, strict=True))


def median_ratio(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Return the median of the per-round ratios ``values / baseline``."""
    return statistics.median(per_round_ratios(values, baseline))


def _check(target: Target, stats: Mapping[str, CaseStats], unit: str) -> TargetCheck:
    case = stats[target.case]
    if target.max_value is not None:
        return TargetCheck(
            target.text,
            case.median,
            target.max_value,
            "value",
            case.median <= target.max_value,
            unit,
        )
    assert target.baseline is not None
    ratios = per_round_ratios(case.values, stats[target.baseline].values)
    if target.max_ratio is not None:
        measured = statistics.median(ratios)
        return TargetCheck(
            target.text, measured, target.max_ratio, "ratio", measured <= target.max_ratio, "x"
        )
    assert target.min_speedup is not None
    speedup = statistics.median(1.0 / r if r else float("inf") for r in ratios)
    return TargetCheck(
        target.text, speedup, target.min_speedup, "speedup", speedup >= target.min_speedup, "x"
    )


async def compare(
    name: str,
    cases: Sequence[Case],
    *,
    rounds: int,
    unit: str,
    baseline: str | None = None,
    targets: Sequence[Target] = (),
    note: str = "",
) -> Comparison:
    """
    Measure every case once per round, rotating the order each round.

    Args:
        name: The comparison's title.
        cases: The contenders (at least one).
        rounds: How many rounds.
        unit: The unit of the figures (``"us/call"``).
        baseline: The case ratios are taken against (defaults to the first).
        targets: Goals to check on the result.
        note: Shown under the table.

    Returns:
        The :class:`Comparison`.

    Raises:
        ValueError: With no cases, no rounds, or an unknown baseline or target case.

    Cancellation:
        Propagates at the next await of a case; nothing is recorded.
    """
    if not cases or rounds < 1:
        raise ValueError("need at least one case and one round")
    names = [case.name for case in cases]
    base = baseline if baseline is not None else names[0]
    for wanted in [base, *(t.case for t in targets), *(t.baseline or base for t in targets)]:
        if wanted not in names:
            raise ValueError(f"unknown case {wanted!r}")
    values: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            values[case.name].append(float(await case.measure()))
    stats: dict[str, CaseStats] = {}
    for n in names:
        ratios = per_round_ratios(values[n], values[base])
        stats[n] = CaseStats(
            name=n,
            values=tuple(values[n]),
            median=statistics.median(values[n]),
            min=min(values[n]),
            ratios=ratios,
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
        )
    checks = tuple(_check(t, stats, unit) for t in targets)
    return Comparison(name, unit, base, rounds, tuple(stats.values()), checks, note)


async def time_sequential(call: Callable[[], Awaitable[object]], n: int) -> float:
    """
    Await ``call()`` *n* times one after another.

    Returns:
        Microseconds per call.

    Cancellation:
        Propagates at the next await.
    """
    start = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - start) * 1e6 / n


async def time_concurrent(call: Callable[[], Awaitable[object]], n: int, callers: int) -> float:
    """
    Await ``call()`` *n* times in total from *callers* concurrent tasks.

    Returns:
        Microseconds per call (wall time / n).

    Cancellation:
        Cancels every caller task and propagates.
    """
    per_caller, extra = divmod(n, callers)

    async def caller(count: int) -> None:
        for _ in range(count):
            await call()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(caller, per_caller + (1 if i < extra else 0))
    return (time.perf_counter() - start) * 1e6 / n


def sequential_case(name: str, call: Callable[[], Awaitable[object]], n: int) -> Case:
    """Return a :class:`Case` timing *n* sequential awaits of ``call()`` (us/call)."""
    return Case(name, lambda: time_sequential(call, n))


def concurrent_case(name: str, call: Callable[[], Awaitable[object]], n: int, callers: int) -> Case:
    """Return a :class:`Case` timing *n* awaits of ``call()`` from *callers* tasks (us/call)."""
    return Case(name, lambda: time_concurrent(call, n, callers))


@dataclasses.dataclass(slots=True)
class SuiteContext:
    """
    What a suite is given: the run's mode, and where it puts its findings.

    Attributes:
        quick: Smaller counts and fewer rounds.
        rounds: Rounds per comparison for this mode.
        result: The record the suite fills.
    """

    quick: bool
    rounds: int
    result: SuiteResult

    def scale(self, full: N, quick: N) -> N:
        """Return *quick* in quick mode, else *full*."""
        return quick if self.quick else full

    async def compare(
        self,
        name: str,
        cases: Sequence[Case],
        *,
        unit: str,
        baseline: str | None = None,
        targets: Sequence[Target] = (),
        note: str = "",
        rounds: int | None = None,
    ) -> Comparison:
        """
        Run :func:`compare` with this mode's rounds and record the result.

        Cancellation:
            As :func:`compare`.
        """
        comparison = await compare(
            name,
            cases,
            rounds=rounds if rounds is not None else self.rounds,
            unit=unit,
            baseline=baseline,
            targets=targets,
            note=note,
        )
        self.result.comparisons.append(comparison)
        return comparison

    def table(self, title: str, header: list[str], rows: list[list[str]]) -> None:
        """Record a free-form table."""
        self.result.tables.append((title, header, rows))

    def curve(self, curve: Curve) -> None:
        """Record a series for a line plot."""
        self.result.curves.append(curve)

    def timeline(self, timeline: Timeline) -> None:
        """Record a run over time, plotted as stacked panels."""
        self.result.timelines.append(timeline)

    def note(self, text: str) -> None:
        """Record a note shown under the suite's tables."""
        self.result.notes.append(text)
