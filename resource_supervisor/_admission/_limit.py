"""
The adaptive concurrency limit, as a pure function of measured latencies.

Covers: :class:`LimitParams`, :class:`LimitState` and :func:`next_limit`, which turns
one window of latency samples into the next limit; :func:`tightened`, which applies
a pressure adjustment from :mod:`._pressure`. Pure: no I/O, no clock (the caller
passes ``now``), no await. Does not cover: collecting the samples or enforcing the
limit (see :mod:`._limiter`).

The rule is Netflix's Gradient2 with two refinements taken from Envoy's adaptive
concurrency filter::

    gradient  = clamp(tolerance * reference / short, 0.5, 1.0)
    limit'    = limit * gradient                                     if gradient < 1
              = (1 - smoothing) * limit + smoothing * (limit + sqrt(limit))
                                                       if gradient == 1 (and in use)
    within [min_limit, max_limit]

* ``short`` is the mean latency of the last window of samples.
* ``long`` is an exponentially weighted average of the windows (Gradient2's long
  RTT). Under sustained overload it drifts up towards ``short`` until the gradient
  no longer sees the queue; so the *reference* is the **minimum** latency, measured
  by the last probe, and ``long`` is only the reference until the first probe ends.
* The first window, and then one every ``probe_interval`` seconds, runs with the
  limit pinned at ``min_limit`` (Envoy's min-RTT measurement, at start and
  periodically): the latency measured with (almost) no queue becomes the new
  minimum, so a service that starts under overload still learns its real speed,
  and one that got slower for good is re-baselined rather than throttled for ever.
  The limit then resumes where it was.
* Cuts apply at once, growth is smoothed: back off within one window when the
  latency jumps, creep back up over several. A window whose first few calls took
  far longer than tolerated closes early (:func:`window_done`).
* The queue allowance ``sqrt(limit)`` (Envoy's headroom) is only added while the
  latency is within tolerance, and only when the window used at least half of the
  limit (Gradient2's app-limited rule). Added unconditionally, as in Gradient2, it
  keeps a one-core service at about ``1.5 + sqrt(limit)`` in flight, three times
  the latency it needs.
* A window that used less than half of the limit lets the limit decay (smoothed)
  towards twice that window's peak: a service idle for a while meets a sudden
  burst with a limit near what it last carried, instead of needing several
  windows of queueing to cut a stale high limit down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

__all__ = (
    "EARLY_WINDOW_FACTOR",
    "EARLY_WINDOW_SAMPLES",
    "MIN_GRADIENT",
    "LimitParams",
    "LimitState",
    "initial_state",
    "next_limit",
    "tightened",
    "window_done",
)

MIN_GRADIENT: Final = 0.5
"""The largest cut one window can ask for (Gradient2 clamps the gradient at 0.5)."""

EARLY_WINDOW_SAMPLES: Final = 3
EARLY_WINDOW_FACTOR: Final = 2.0
"""A window closes early, after :data:`EARLY_WINDOW_SAMPLES` calls, when their mean
latency is over this many times ``tolerance x reference`` (see :func:`window_done`)."""


@dataclass(frozen=True, slots=True)
class LimitParams:
    """
    Tuning of the limit algorithm.

    Attributes:
        min_limit: The floor (at least 1): the limit never goes below it.
        max_limit: The ceiling.
        initial_limit: Where the limit starts.
        tolerance: How much slower than the reference latency a window may be
            before the limit shrinks (1.5 = 50 % slower).
        smoothing: Weight of the grown target in each growing update (0 < s <= 1);
            cuts are not smoothed.
        long_window: Windows averaged by the long latency (its EWMA horizon).
        probe_interval: Seconds between minimum-latency probes; ``None`` never
            probes (the minimum then only falls).
    """

    min_limit: int = 1
    max_limit: int = 1000
    initial_limit: int = 20
    tolerance: float = 1.5
    smoothing: float = 0.2
    long_window: int = 20
    probe_interval: float | None = 10.0

    def __post_init__(self) -> None:
        if self.min_limit < 1:
            raise ValueError(f"min_limit must be at least 1, got {self.min_limit}")
        if self.max_limit < self.min_limit:
            raise ValueError(
                f"max_limit ({self.max_limit}) must not be below min_limit ({self.min_limit})"
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"initial_limit ({self.initial_limit}) must lie in "
                f"[{self.min_limit}, {self.max_limit}]"
            )
        if not (math.isfinite(self.tolerance) and self.tolerance >= 1.0):
            raise ValueError(f"tolerance must be at least 1, got {self.tolerance}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {self.smoothing}")
        if self.long_window < 1:
            raise ValueError(f"long_window must be at least 1, got {self.long_window}")
        if self.probe_interval is not None and not self.probe_interval > 0:
            raise ValueError(f"probe_interval must be positive, got {self.probe_interval}")


@dataclass(frozen=True, slots=True)
class LimitState:
    """
    Everything the algorithm remembers between windows.

    Attributes:
        limit: The current limit (a float; the limiter admits ``floor(limit)``).
        short: Mean latency of the last window in seconds (NaN before any).
        long: EWMA of the window latencies in seconds (NaN before any).
        minimum: The latency the last probe measured at the floor (NaN before any).
        probing: Whether the current window is a minimum-latency probe.
        resume_limit: The limit to restore when the probe ends.
        probe_at: When the next probe is due (``now`` units of the caller).
    """

    limit: float
    short: float = math.nan
    long: float = math.nan
    minimum: float = math.nan
    probing: bool = False
    resume_limit: float = math.nan
    probe_at: float = math.inf

    @property
    def reference(self) -> float:
        """The latency the gradient compares against: the minimum, else the long one."""
        return self.long if math.isnan(self.minimum) else self.minimum

    @property
    def admit(self) -> int:
        """How many calls may run at once under this state."""
        return max(1, math.floor(self.limit))


def initial_state(params: LimitParams, now: float) -> LimitState:
    """
    The state before any sample.

    Args:
        params: The tuning.
        now: The caller's clock.

    Returns:
        A state whose first window is a probe at ``min_limit``, resuming at
        ``initial_limit``; the next probe is due one interval after it ends.
    """
    interval = params.probe_interval
    return LimitState(
        limit=float(params.min_limit),
        probing=True,
        resume_limit=float(params.initial_limit),
        probe_at=math.inf if interval is None else now + interval,
    )


def _clamp(value: float, params: LimitParams) -> float:
    return min(float(params.max_limit), max(float(params.min_limit), value))


def next_limit(
    state: LimitState,
    window_latency: float,
    peak_in_flight: int,
    now: float,
    params: LimitParams,
) -> LimitState:
    """
    Fold one window of samples into the state. Pure.

    Args:
        state: The state before the window.
        window_latency: Mean latency of the window's calls, in seconds (> 0).
        peak_in_flight: The most calls in flight at once during the window.
        now: The caller's clock when the window closed.
        params: The tuning.

    Returns:
        The state after the window; its ``limit`` lies in
        ``[min_limit, max_limit]``.

    Raises:
        ValueError: If *window_latency* is not a positive finite number.
    """
    if not (math.isfinite(window_latency) and window_latency > 0):
        raise ValueError(f"window latency must be positive and finite, got {window_latency}")
    short = window_latency
    alpha = 2.0 / (params.long_window + 1)
    long = short if math.isnan(state.long) else (1 - alpha) * state.long + alpha * short

    if state.probing:
        # The probe window ran at min_limit: its latency is the new minimum.
        return LimitState(
            limit=state.resume_limit,
            short=short,
            long=long,
            minimum=short,
            probing=False,
            probe_at=now + params.probe_interval if params.probe_interval is not None else math.inf,
        )
    # The minimum is what the last probe measured at the floor (Envoy). Taking the
    # smallest window since then instead would let one lucky window on a noisy
    # machine set a reference the service cannot meet, pinning the limit low.
    minimum = state.minimum
    reference = long if math.isnan(minimum) else minimum
    gradient = max(MIN_GRADIENT, min(1.0, params.tolerance * reference / short))
    limit = state.limit
    if gradient < 1.0:
        limit = _clamp(limit * gradient, params)
    elif peak_in_flight * 2 >= limit:
        target = limit + math.sqrt(limit)
        limit = _clamp((1 - params.smoothing) * limit + params.smoothing * target, params)
    else:
        # App-limited: nothing validated this limit lately. Let it decay towards
        # twice the demand seen, so that a sudden burst meets a limit near what
        # the service was last shown to carry, not one left high from long ago.
        target = 2.0 * peak_in_flight
        limit = _clamp((1 - params.smoothing) * limit + params.smoothing * target, params)
    if now >= state.probe_at and limit > params.min_limit:
        # Pin the limit at the floor for one window to re-measure the minimum.
        return LimitState(
            limit=float(params.min_limit),
            short=short,
            long=long,
            minimum=minimum,
            probing=True,
            resume_limit=limit,
            probe_at=state.probe_at,
        )
    probe_at = state.probe_at
    if now >= probe_at and params.probe_interval is not None:
        # Already at the floor: every window measures the minimum, no probe needed.
        probe_at = now + params.probe_interval
    return LimitState(limit=limit, short=short, long=long, minimum=minimum, probe_at=probe_at)


def window_done(
    count: int, mean_latency: float, window_samples: int, state: LimitState, params: LimitParams
) -> bool:
    """
    Whether the open window closes now, with *count* samples of mean *mean_latency*. Pure.

    A full window (*window_samples*) closes. So does one of at least
    :data:`EARLY_WINDOW_SAMPLES` samples whose mean is over
    :data:`EARLY_WINDOW_FACTOR` times ``tolerance x reference``: a limit far above
    what the service carries is then cut after a few calls, each of which took as
    long as the whole backlog, rather than after a full window of them (at a limit
    of 10 on a one-core service, three windows of ten calls at up to ten times the
    unloaded latency). Never early during a probe or before a reference exists.

    Args:
        count: Samples in the open window.
        mean_latency: Their mean latency in seconds.
        window_samples: The full window's size.
        state: The algorithm's state.
        params: The tuning.

    Returns:
        ``True`` if the window should be folded in now.
    """
    if count >= window_samples:
        return True
    if state.probing or count < EARLY_WINDOW_SAMPLES:
        return False
    reference = state.reference
    if math.isnan(reference):
        return False
    return mean_latency > EARLY_WINDOW_FACTOR * params.tolerance * reference


def tightened(state: LimitState, factor: float, params: LimitParams) -> LimitState:
    """
    Multiply the limit by *factor* (``0 < factor <= 1``), not below the floor. Pure.

    A probe in progress keeps running; the limit it restores is tightened instead.

    Args:
        state: The state.
        factor: The multiplier from :func:`._pressure.pressure_adjustment`; 0
            drops the limit to the floor.
        params: The tuning.

    Returns:
        The tightened state.

    Raises:
        ValueError: If *factor* is outside ``[0, 1]``.
    """
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"factor must lie in [0, 1], got {factor}")
    if state.probing:
        return replace(state, resume_limit=_clamp(state.resume_limit * factor, params))
    return replace(state, limit=_clamp(state.limit * factor, params))
