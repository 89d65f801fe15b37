"""The benchmark's rate estimators: answers outside the window and bunched first answers."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from benchmarks._open_loop import PhaseResult, steady_rate, window_rate


def test_answers_after_the_window_are_not_goodput() -> None:
    # 10 answers inside a 1 s window, then a backlog of 5 delivered after it.
    finished = [0.1 * i for i in range(10)] + [1.0 + 0.1 * i for i in range(5)]
    assert window_rate(finished, 0.0, 1.0) == 10.0


def test_window_opens_at_the_settle_time() -> None:
    result = PhaseResult(2.0, finished=[0.05, 0.5, 1.5, 2.05, 2.2], window_start=0.1)
    # inside [0.1, 2.1): 0.5, 1.5, 2.05
    assert result.goodput == 1.5


def test_bunched_closed_loop_answers_are_not_counted_twice() -> None:
    # Four clients under processor sharing: four answers at once every 0.32 s,
    # a true rate of 12.5 per second.
    finished = sorted(0.32 * k + 1e-4 * c for k in range(1, 11) for c in range(4))
    assert math.isclose(steady_rate(finished, 4), 12.5, rel_tol=0.01)
    naive = (len(finished) - 1) / (finished[-1] - finished[0])
    assert naive > 13.5  # what counting from the first answer reported


@given(
    st.floats(min_value=0.01, max_value=1.0),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=3, max_value=60),
)
def test_steady_rate_of_evenly_spaced_answers_is_exact(gap: float, clients: int, n: int) -> None:
    finished = [gap * (i + 1) for i in range(n + clients)]
    assert math.isclose(steady_rate(finished, clients), 1 / gap, rel_tol=1e-9)


def test_too_few_answers_give_nan() -> None:
    assert math.isnan(steady_rate([1.0, 2.0], 4))
    assert math.isnan(window_rate([1.0], math.nan, 1.0))
