"""Tests for the pure adaptive limit algorithm (_admission/_limit.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resource_supervisor._admission._limit import (
    MIN_GRADIENT,
    LimitParams,
    LimitState,
    initial_state,
    next_limit,
    tightened,
)

NO_PROBE = LimitParams(probe_interval=None)

params_strategy = st.builds(
    LimitParams,
    min_limit=st.integers(1, 5),
    max_limit=st.integers(5, 500),
    initial_limit=st.just(5),
    tolerance=st.floats(1.0, 3.0),
    smoothing=st.floats(0.05, 1.0),
    long_window=st.integers(1, 50),
    probe_interval=st.one_of(st.none(), st.floats(0.1, 5.0)),
)
window = st.tuples(st.floats(1e-4, 10.0), st.integers(0, 1000))


def served_latency(limit: float, service: float, cores: int) -> float:
    """A CPU-bound service shared by its calls: latency grows once calls outnumber cores."""
    in_flight = max(1, math.floor(limit))
    return service * max(1.0, in_flight / cores)


@settings(max_examples=60)
@given(params=params_strategy, windows=st.lists(window, max_size=60), factors=st.data())
def test_limit_stays_within_its_bounds(
    params: LimitParams, windows: list[tuple[float, int]], factors: st.DataObject
) -> None:
    """Whatever the latencies, demand and tightening, the limit stays in [min, max]."""
    state = initial_state(params, 0.0)
    for i, (latency, peak) in enumerate(windows):
        state = next_limit(state, latency, peak, float(i), params)
        if factors.draw(st.booleans()):
            state = tightened(state, factors.draw(st.floats(0.0, 1.0)), params)
        assert params.min_limit <= state.limit <= params.max_limit
        assert params.min_limit <= state.admit <= params.max_limit
        if state.probing:
            assert params.min_limit <= state.resume_limit <= params.max_limit


@settings(max_examples=40)
@given(
    latency=st.floats(1e-4, 1.0),
    smoothing=st.floats(0.1, 1.0),
    tolerance=st.floats(1.0, 2.0),
)
def test_steady_latency_under_full_use_grows_to_the_ceiling(
    latency: float, smoothing: float, tolerance: float
) -> None:
    """A latency that does not change with load never cuts the limit; it climbs to max."""
    params = LimitParams(
        max_limit=200, smoothing=smoothing, tolerance=tolerance, probe_interval=None
    )
    state = initial_state(params, 0.0)
    for i in range(2000):
        before = state.limit
        state = next_limit(state, latency, state.admit, float(i), params)
        assert state.limit >= before
        if state.limit == params.max_limit:
            break
    assert state.limit == params.max_limit
    assert state.short == pytest.approx(latency)
    assert state.minimum == pytest.approx(latency)
    assert state.long == pytest.approx(latency)


@settings(max_examples=40)
@given(
    cores=st.integers(1, 16),
    service=st.floats(1e-3, 1.0),
    tolerance=st.floats(1.0, 2.0),
    smoothing=st.floats(0.1, 0.5),
)
def test_converges_near_the_cores_on_a_cpu_bound_service(
    cores: int, service: float, tolerance: float, smoothing: float
) -> None:
    """
    On a service whose latency grows with calls beyond its cores, the limit settles
    between half the cores and tolerance x cores plus the sqrt headroom, even when
    it starts far too high (so that its first windows only saw the queue): the
    periodic probe measures the real minimum and the gradient then cuts.
    """
    params = LimitParams(
        max_limit=1000,
        initial_limit=500,
        tolerance=tolerance,
        smoothing=smoothing,
        probe_interval=10.0,
    )
    state = initial_state(params, 0.0)
    upper = tolerance * cores + math.sqrt(tolerance * cores) + 2
    for i in range(400):
        latency = served_latency(state.limit, service, cores)
        state = next_limit(state, latency, state.admit, float(i), params)
        if i >= 300 and not state.probing:
            assert cores * MIN_GRADIENT - 1 <= state.limit <= upper


@settings(max_examples=40)
@given(
    steady=st.floats(1e-3, 1.0),
    step=st.floats(2.0, 20.0),
    smoothing=st.floats(0.1, 1.0),
)
def test_backs_off_after_a_latency_step(steady: float, step: float, smoothing: float) -> None:
    """
    When latency jumps well past the tolerance, every window cuts the limit by the
    gradient at once (cuts are not smoothed) until it reaches the floor.
    """
    params = LimitParams(
        max_limit=100, initial_limit=100, tolerance=1.5, smoothing=smoothing, probe_interval=None
    )
    state = next_limit(initial_state(params, 0.0), steady, 100, 0.0, params)
    slow = steady * step
    gradient = max(MIN_GRADIENT, 1.5 / step)
    for i in range(1, 200):
        before = state.limit
        state = next_limit(state, slow, state.admit, float(i), params)
        if before > params.min_limit:
            expected = max(params.min_limit, before * gradient)
            assert state.limit == pytest.approx(expected)
            assert state.limit < before
    assert state.limit == params.min_limit


def test_headroom_only_when_the_limit_is_in_use() -> None:
    """Good latency grows the limit only when the window used at least half of it."""
    params = NO_PROBE
    state = next_limit(initial_state(params, 0.0), 0.01, 1, 0.0, params)  # the first probe
    assert state.limit == params.initial_limit
    state = next_limit(state, 0.01, 20, 0.5, params)
    grown = state.limit
    assert grown > params.initial_limit
    used = next_limit(state, 0.01, math.ceil(grown / 2), 1.0, params)
    assert used.limit > grown
    idle = next_limit(state, 0.01, math.floor(grown / 2) - 1, 1.0, params)
    assert idle.limit < grown


@given(peak=st.integers(0, 40), windows=st.integers(1, 200))
def test_an_idle_limit_decays_towards_twice_the_demand(peak: int, windows: int) -> None:
    """
    App-limited windows never grow the limit; it decays towards twice their peak
    (never below it, nor below the floor), so a burst meets a recently validated limit.
    """
    params = LimitParams(initial_limit=100, max_limit=100, probe_interval=None)
    state = next_limit(initial_state(params, 0.0), 0.01, 1, 0.0, params)
    for i in range(windows):
        before = state.limit
        state = next_limit(state, 0.01, peak, float(i + 1), params)
        assert state.limit <= before
        assert state.limit >= max(params.min_limit, 2 * peak) or state.limit == before
    if windows >= 100:
        assert state.limit == pytest.approx(max(params.min_limit, 2 * peak), abs=0.5)


def test_probe_pins_the_floor_for_one_window_then_rebaselines() -> None:
    """
    Once the probe interval has passed, one window runs at min_limit; its latency
    becomes the new minimum and the previous limit comes back. A service that got
    slower for good is thus compared against its new speed, not throttled for ever.
    """
    params = LimitParams(probe_interval=5.0, initial_limit=20)
    state = initial_state(params, 0.0)
    assert state.probing  # the first window measures the minimum
    assert state.limit == params.min_limit
    state = next_limit(state, 0.010, 1, 0.1, params)
    assert state.minimum == pytest.approx(0.010)
    assert not state.probing
    assert state.limit == params.initial_limit
    assert state.probe_at == pytest.approx(5.1)
    state = next_limit(state, 0.010, 20, 5.1, params)
    assert state.probing
    assert state.limit == params.min_limit
    resume = state.resume_limit
    assert resume > params.min_limit
    # the service is now twice as slow, measured at the floor
    state = next_limit(state, 0.020, 1, 5.5, params)
    assert not state.probing
    assert state.limit == resume
    assert state.minimum == pytest.approx(0.020)
    assert state.probe_at == pytest.approx(10.5)
    assert math.isnan(state.resume_limit)  # nothing to resume once the probe ended
    # compared with the new minimum, 0.025 s is within tolerance: no cut
    after = next_limit(state, 0.025, state.admit, 6.0, params)
    assert after.limit >= state.limit


def test_no_probe_when_already_at_the_floor() -> None:
    """At the floor every window measures the minimum: the probe is just rescheduled."""
    params = LimitParams(probe_interval=1.0, initial_limit=1, max_limit=1)
    state = next_limit(initial_state(params, 0.0), 0.01, 1, 2.0, params)
    assert not state.probing
    assert state.probe_at == pytest.approx(3.0)


def test_reference_is_the_long_latency_before_a_minimum() -> None:
    """Before any minimum exists the reference is the long estimate; NaN before any window."""
    assert math.isnan(LimitState(limit=1.0).reference)
    assert LimitState(limit=1.0, long=0.3).reference == 0.3
    assert LimitState(limit=1.0, long=0.3, minimum=0.1).reference == 0.1
    assert LimitState(limit=0.2).admit == 1


def test_tightened_drops_to_the_floor_and_reaches_a_probe_resume() -> None:
    """Factor 0 is the floor; during a probe the limit to restore is tightened instead."""
    params = LimitParams(initial_limit=40, probe_interval=1.0)
    state = LimitState(limit=40.0, probe_at=1.0)
    assert tightened(state, 0.0, params).limit == params.min_limit
    assert tightened(state, 0.5, params).limit == 20
    probing = next_limit(state, 0.01, 40, 2.0, params)
    assert probing.probing
    halved = tightened(probing, 0.5, params)
    assert halved.limit == params.min_limit
    assert halved.resume_limit == pytest.approx(probing.resume_limit / 2)
    with pytest.raises(ValueError, match="factor"):
        tightened(state, 1.5, params)


@pytest.mark.parametrize("latency", [0.0, -1.0, math.nan, math.inf])
def test_next_limit_rejects_a_bad_latency(latency: float) -> None:
    """A window latency must be a positive finite number."""
    with pytest.raises(ValueError, match="latency"):
        next_limit(initial_state(NO_PROBE, 0.0), latency, 1, 0.0, NO_PROBE)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_limit": 0}, "min_limit"),
        ({"min_limit": 5, "max_limit": 4, "initial_limit": 5}, "max_limit"),
        ({"initial_limit": 2000}, "initial_limit"),
        ({"tolerance": 0.9}, "tolerance"),
        ({"tolerance": math.nan}, "tolerance"),
        ({"smoothing": 0.0}, "smoothing"),
        ({"long_window": 0}, "long_window"),
        ({"probe_interval": 0.0}, "probe_interval"),
    ],
)
def test_params_reject_bad_values(kwargs: dict[str, float], match: str) -> None:
    """Bad tuning is refused with the name of the field."""
    with pytest.raises(ValueError, match=match):
        LimitParams(**kwargs)  # type: ignore[arg-type]
