"""When a window of latency samples closes (_admission/_limit.py window_done), pure and applied."""

from __future__ import annotations

import math

import anyio
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import AdmissionLimiter
from resource_supervisor._admission._limit import (
    EARLY_WINDOW_FACTOR,
    EARLY_WINDOW_SAMPLES,
    LimitParams,
    LimitState,
    window_done,
)
from resource_supervisor.testing import ManualClock

PARAMS = LimitParams(probe_interval=None, tolerance=1.5)


@given(
    count=st.integers(0, 50),
    window=st.integers(1, 50),
    mean=st.floats(1e-6, 100.0),
    reference=st.floats(1e-6, 10.0),
    probing=st.booleans(),
)
def test_a_window_closes_when_full_or_early_when_far_too_slow(
    count: int, window: int, mean: float, reference: float, probing: bool
) -> None:
    state = LimitState(limit=10.0, minimum=reference, probing=probing)
    done = window_done(count, mean, window, state, PARAMS)
    far_too_slow = mean > EARLY_WINDOW_FACTOR * PARAMS.tolerance * reference
    early = not probing and count >= EARLY_WINDOW_SAMPLES and far_too_slow
    assert done == (count >= window or early)
    if done and count < window:  # a slower window would have closed too
        assert window_done(count, mean * 2, window, state, PARAMS)


@given(count=st.integers(0, 9), mean=st.floats(1e-6, 1e6))
def test_no_early_close_before_a_reference_is_measured(count: int, mean: float) -> None:
    state = LimitState(limit=10.0)  # no minimum, no long latency
    assert math.isnan(state.reference)
    assert not window_done(count, mean, 10, state, PARAMS)


async def test_a_limit_far_too_high_is_cut_after_a_few_slow_calls() -> None:
    """Three calls at ten times the reference cut the limit before the window is full."""
    clock = ManualClock()
    lim = AdmissionLimiter(
        LimitParams(initial_limit=10, max_limit=100, probe_interval=None),
        queue_limit=0,
        window_samples=10,
        clock=clock,
    )
    for _ in range(10):  # the first window is the probe at the floor: 0.1 s each
        async with lim.slot():
            clock.advance(0.1)
    assert lim.limit == 10
    assert math.isclose(lim.statistics().latency_min_seconds, 0.1)
    release = anyio.Event()

    async def slow() -> None:
        async with lim.slot():
            await release.wait()
            clock.advance(0.4)  # ten in flight: each took a second by the last

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(slow)
            await anyio.wait_all_tasks_blocked()
            assert lim.statistics().in_flight == 10
            release.set()
            await anyio.wait_all_tasks_blocked()
    # 0.4, 0.8 and 1.2 s: mean 0.8 s > 2 x 1.5 x 0.1 s after three calls, so the window
    # closes and halves the limit; so do the next two threes: 10 -> 5 -> 2.5 -> 1.25.
    # One full window of ten would have cut it once, to 5.
    assert lim.limit == 1
