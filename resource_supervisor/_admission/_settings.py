"""
Build an :class:`._limiter.AdmissionLimiter` from the ``admission:`` settings.

Covers: :func:`limiter_from_settings`. Does not cover: validation (see
:class:`resource_supervisor._config.AdmissionSettings`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._limit import LimitParams
from ._limiter import AdmissionLimiter
from ._pressure import PressureParams

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._config import AdmissionSettings
    from ._cpu_stat import CpuStatReader

__all__ = ("limiter_from_settings",)


def limiter_from_settings(
    settings: AdmissionSettings,
    *,
    cpu_stat: CpuStatReader | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AdmissionLimiter:
    """
    Build a limiter with the tuning in *settings*.

    Args:
        settings: The validated ``admission:`` section.
        cpu_stat: The cgroup throttling reader (``None`` = no throttling input).
        clock: Monotonic clock in seconds.

    Returns:
        A new limiter (call ``open()`` before use to read throttling).
    """
    params = LimitParams(
        min_limit=settings.min_limit,
        max_limit=settings.max_limit,
        initial_limit=settings.initial_limit,
        tolerance=settings.tolerance,
        smoothing=settings.smoothing,
        long_window=settings.long_window,
        probe_interval=settings.probe_interval,
    )
    pressure = PressureParams(
        cpu_saturation_percent=settings.cpu_saturation_percent,
        throttled_percent=settings.cpu_throttled_percent,
        cpu_backoff=settings.cpu_backoff,
    )
    return AdmissionLimiter(
        params,
        queue_limit=settings.queue_limit,
        queue_timeout=settings.queue_timeout,
        window_samples=settings.window_samples,
        pressure=pressure,
        cpu_stat=cpu_stat,
        clock=clock,
    )
