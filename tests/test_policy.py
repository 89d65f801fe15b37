"""Tests for the pure pressure policy: levels, hysteresis, per-resource grading, cooldown."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._policy import Reading, Thresholds, cleanup_due, grade, next_level
from resource_supervisor._snapshot import PressureLevel

N, W, C = PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL
MEM = Thresholds(warning=75.0, critical=85.0, hysteresis=5.0)

levels = st.sampled_from(PressureLevel)
usage = st.floats(0.0, 150.0)


@pytest.mark.parametrize(
    ("current", "value", "expected"),
    [
        (N, 0.0, N),
        (N, 74.9, N),
        (N, 75.0, W),
        (N, 84.9, W),
        (N, 85.0, C),
        (N, 100.0, C),
        (W, 70.0, W),  # inside the band: holds
        (W, 69.9, N),  # below warning - hysteresis: leaves
        (W, 85.0, C),
        (C, 80.0, C),  # holds down to critical - hysteresis
        (C, 79.9, W),
        (C, 69.9, N),
        (C, math.nan, C),  # a failed read is no evidence
        (N, math.nan, N),
    ],
)
def test_level_table(current: PressureLevel, value: float, expected: PressureLevel) -> None:
    """The documented hysteresis cycle, point by point."""
    assert next_level(current, value, MEM) == expected


def test_disabled_level_is_never_entered() -> None:
    """A None threshold disables its level."""
    warn_only = Thresholds(warning=10.0, critical=None, hysteresis=1.0)
    assert next_level(N, 1000.0, warn_only) == W
    crit_only = Thresholds(warning=None, critical=50.0)
    assert next_level(N, 49.0, crit_only) == N
    assert next_level(N, 50.0, crit_only) == C


@given(current=levels, value=usage)
def test_level_is_stable_once_reached(current: PressureLevel, value: float) -> None:
    """Grading the same usage again never moves the level (no flapping)."""
    level = next_level(current, value, MEM)
    assert next_level(level, value, MEM) == level


@given(current=levels, low=usage, high=usage)
def test_monotone_in_usage(current: PressureLevel, low: float, high: float) -> None:
    """More usage never gives a lower level, from the same starting level."""
    low, high = sorted((low, high))
    assert next_level(current, low, MEM) <= next_level(current, high, MEM)


@given(a=levels, b=levels, value=usage)
def test_monotone_in_previous_level(a: PressureLevel, b: PressureLevel, value: float) -> None:
    """Starting higher never ends lower (hysteresis only holds levels up)."""
    a, b = sorted((a, b))
    assert next_level(a, value, MEM) <= next_level(b, value, MEM)


@given(start=levels, wiggle=st.lists(st.floats(70.0, 74.99), min_size=1, max_size=30))
def test_no_flapping_inside_the_warning_band(start: PressureLevel, wiggle: list[float]) -> None:
    """Usage moving inside [warning - hysteresis, warning) never changes the level."""
    level = next_level(start, wiggle[0], MEM)
    for value in wiggle[1:]:
        assert next_level(level, value, MEM) == level


@given(value=usage)
def test_level_bounds(value: float) -> None:
    """Far below every leave mark is NORMAL; at or above critical is CRITICAL, from anywhere."""
    for current in PressureLevel:
        if value < 70.0:
            assert next_level(current, value, MEM) == N
        if value >= 85.0:
            assert next_level(current, value, MEM) == C


def test_grade_keeps_hysteresis_per_resource() -> None:
    """Each resource (and device) keeps its own level; the overall level is the worst."""
    gpu = Thresholds(50.0, 90.0, 10.0)
    first = grade(
        {},
        [
            Reading("memory", 80.0, MEM),
            Reading("gpu", 95.0, gpu, device="cuda:0"),
            Reading("gpu", 10.0, gpu, device="cuda:1"),
        ],
    )
    assert first.level == C
    assert first.trigger is not None
    assert (first.trigger.resource, first.trigger.device) == ("gpu", "cuda:0")
    assert first.levels == {"memory": W, "gpu:cuda:0": C, "gpu:cuda:1": N}
    # gpu0 falls into its band (holds WARNING... 85 >= 80 leave mark of CRITICAL), memory leaves
    second = grade(
        first.levels,
        [
            Reading("memory", 60.0, MEM),
            Reading("gpu", 85.0, gpu, device="cuda:0"),
            Reading("gpu", 10.0, gpu, device="cuda:1"),
        ],
    )
    assert second.levels == {"memory": N, "gpu:cuda:0": C, "gpu:cuda:1": N}
    assert second.level == C
    third = grade(second.levels, [Reading("memory", 60.0, MEM)])
    assert third.level == N
    assert third.trigger is None


@pytest.mark.parametrize(
    ("previous", "level", "now", "last", "expected"),
    [
        (N, N, 100.0, None, None),
        (N, W, 100.0, None, "normal"),
        (N, W, 100.0, 99.0, "normal"),  # entering a level ignores the cooldown
        (W, C, 100.0, 99.0, "aggressive"),
        (N, C, 100.0, None, "aggressive"),
        (W, W, 100.0, 90.0, None),  # holding: within cooldown
        (W, W, 100.0, 70.0, "normal"),  # holding: cooldown passed
        (C, C, 100.0, 71.0, None),
        (C, C, 100.0, 70.0, "aggressive"),
        (C, W, 100.0, 95.0, None),  # falling back: cooldown governs
        (C, W, 100.0, 60.0, "normal"),
        (W, N, 100.0, 0.0, None),
    ],
)
def test_cleanup_due_table(
    previous: PressureLevel,
    level: PressureLevel,
    now: float,
    last: float | None,
    expected: str | None,
) -> None:
    """Cleanup runs on entering a level and repeats at most once per cooldown (30 s here)."""
    assert cleanup_due(previous, level, now=now, last_cleanup_at=last, cooldown=30.0) == expected


@given(
    steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.sampled_from([W, C])), min_size=1, max_size=40)
)
def test_holding_level_respects_cooldown(steps: list[tuple[float, PressureLevel]]) -> None:
    """While pressure stays elevated at one level, cleanups are at least a cooldown apart."""
    level = steps[0][1]
    now, last = 0.0, None
    runs: list[float] = []
    previous = N
    for delta, _ in steps:
        now += delta
        if cleanup_due(previous, level, now=now, last_cleanup_at=last, cooldown=10.0):
            runs.append(now)
            last = now
        previous = level
    assert all(b - a >= 10.0 for a, b in itertools.pairwise(runs))
    assert runs[0] == steps[0][0]
