"""Tests for the pure pressure rule of admission control (_admission/_pressure.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._admission._pressure import (
    NO_ADJUSTMENT,
    PressureInputs,
    PressureParams,
    adjustment_for,
    pressure_adjustment,
)
from resource_supervisor._snapshot import PressureLevel
from tests.strategies import pressure_levels

PARAMS = PressureParams()

inputs_strategy = st.builds(
    PressureInputs,
    level=pressure_levels(),
    cpu_percent=st.one_of(st.just(math.nan), st.floats(0.0, 200.0)),
    throttled_ratio=st.one_of(st.just(math.nan), st.floats(0.0, 1.0)),
    lane_queued=st.integers(0, 10_000),
    lane_workers=st.integers(0, 64),
)


@given(inputs=inputs_strategy)
def test_factor_is_a_fraction_and_any_tightening_holds(inputs: PressureInputs) -> None:
    """The factor lies in [0, 1]; whenever it tightens, the limit may not grow either."""
    adjustment = pressure_adjustment(inputs, PARAMS)
    assert 0.0 <= adjustment.factor <= 1.0
    if adjustment.factor < 1.0:
        assert adjustment.hold
        assert adjustment.reasons
    assert adjustment.hold == bool(adjustment.reasons)


@given(inputs=inputs_strategy)
def test_critical_memory_always_drops_to_the_floor(inputs: PressureInputs) -> None:
    """At CRITICAL, whatever the CPU and the lane say, the limit goes to its floor."""
    critical = PressureInputs(
        PressureLevel.CRITICAL,
        inputs.cpu_percent,
        inputs.throttled_ratio,
        inputs.lane_queued,
        inputs.lane_workers,
    )
    adjustment = pressure_adjustment(critical, PARAMS)
    assert adjustment.factor == 0.0
    assert adjustment.hold
    assert adjustment.reasons == ("memory",)


@given(cpu=st.floats(0.0, 100.0), more=st.floats(0.0, 100.0))
def test_more_cpu_never_loosens(cpu: float, more: float) -> None:
    """Raising process CPU never raises the factor (monotone)."""
    low = pressure_adjustment(PressureInputs(cpu_percent=cpu), PARAMS)
    high = pressure_adjustment(PressureInputs(cpu_percent=cpu + more), PARAMS)
    assert high.factor <= low.factor


@given(queued=st.integers(0, 1000), more=st.integers(0, 1000), workers=st.integers(1, 32))
def test_a_longer_lane_queue_never_loosens(queued: int, more: int, workers: int) -> None:
    """A deeper process-lane queue never raises the factor; it never cuts below one half."""
    low = pressure_adjustment(PressureInputs(lane_queued=queued, lane_workers=workers), PARAMS)
    high = pressure_adjustment(
        PressureInputs(lane_queued=queued + more, lane_workers=workers), PARAMS
    )
    assert 0.5 <= high.factor <= low.factor


def test_each_input_and_its_reason() -> None:
    """Each case of the rule, with the reason it reports."""
    assert pressure_adjustment(PressureInputs(), PARAMS) == NO_ADJUSTMENT
    warning = pressure_adjustment(PressureInputs(level=PressureLevel.WARNING), PARAMS)
    assert (warning.factor, warning.hold, warning.reasons) == (1.0, True, ("memory",))
    cpu = pressure_adjustment(PressureInputs(cpu_percent=96.0), PARAMS)
    assert (cpu.factor, cpu.reasons) == (0.8, ("cpu",))
    assert pressure_adjustment(PressureInputs(cpu_percent=94.0), PARAMS) == NO_ADJUSTMENT
    throttled = pressure_adjustment(PressureInputs(throttled_ratio=0.05), PARAMS)
    assert (throttled.factor, throttled.reasons) == (0.8, ("cpu_throttling",))
    assert pressure_adjustment(PressureInputs(throttled_ratio=0.04), PARAMS) == NO_ADJUSTMENT
    lane = pressure_adjustment(PressureInputs(lane_queued=6, lane_workers=4), PARAMS)
    assert lane.factor == pytest.approx(4 / 6)
    assert lane.reasons == ("process_lane",)
    # one call per worker waiting is the lane at capacity, not a backlog
    assert pressure_adjustment(PressureInputs(lane_queued=4, lane_workers=4), PARAMS).factor == 1
    everything = pressure_adjustment(
        PressureInputs(PressureLevel.WARNING, 99.0, 0.5, 100, 4), PARAMS
    )
    assert everything.factor == 0.5
    assert everything.reasons == ("memory", "cpu", "cpu_throttling", "process_lane")


def test_inputs_switched_off_are_ignored() -> None:
    """None thresholds turn the CPU inputs off; NaN readings (unknown) never tighten."""
    off = PressureParams(cpu_saturation_percent=None, throttled_percent=None)
    assert pressure_adjustment(PressureInputs(cpu_percent=100.0, throttled_ratio=1.0), off) == (
        NO_ADJUSTMENT
    )
    assert pressure_adjustment(PressureInputs(), PARAMS) == NO_ADJUSTMENT


@pytest.mark.parametrize("backoff", [0.0, 1.0, -0.1])
def test_params_reject_a_backoff_outside_the_open_unit_interval(backoff: float) -> None:
    """cpu_backoff must shrink the limit without zeroing it."""
    with pytest.raises(ValueError, match="cpu_backoff"):
        PressureParams(cpu_backoff=backoff)


@given(inputs=inputs_strategy)
def test_inputs_one_by_one_give_the_same_adjustment(inputs: PressureInputs) -> None:
    """adjustment_for (the limiter's per-sample path) is pressure_adjustment, input by
    input; nothing to tighten or hold is NO_ADJUSTMENT itself."""
    i = inputs
    one_by_one = adjustment_for(
        i.level, i.cpu_percent, i.throttled_ratio, i.lane_queued, i.lane_workers, PARAMS
    )
    assert one_by_one == pressure_adjustment(inputs, PARAMS)
    if one_by_one == NO_ADJUSTMENT:
        assert one_by_one is NO_ADJUSTMENT
