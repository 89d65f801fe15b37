"""
Shared test helpers: snapshot builders and Hypothesis strategies.

``make_snapshot(**overrides)`` builds a valid :class:`MetricsSnapshot` with every core
metric; the strategies draw pressure levels, memory figures and whole snapshots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypothesis import strategies as st

from resource_supervisor._snapshot import MetricsSnapshot, MetricValue, PressureLevel

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = (
    "GIB",
    "MIB",
    "make_snapshot",
    "memory_figures",
    "pressure_levels",
    "snapshots",
)

MIB = 1024 * 1024
GIB = 1024 * MIB


def make_snapshot(**overrides: MetricValue) -> MetricsSnapshot:
    """
    Return a snapshot with every core metric set to a plausible value.

    Defaults: 4 GiB used of an 8 GiB host limit (50 %), NORMAL pressure. Pass any
    metric as a keyword to override it. When ``memory_used_bytes`` or
    ``memory_limit_bytes`` is given and ``memory_percent`` is not, the percent is
    derived from them.
    """
    used = int(overrides.get("memory_used_bytes", 4 * GIB))
    limit = int(overrides.get("memory_limit_bytes", 8 * GIB))
    data: dict[str, MetricValue] = {
        "system_memory_percent": 50.0,
        "system_cpu_percent": 10.0,
        "memory_used_bytes": used,
        "memory_limit_bytes": limit,
        "memory_percent": 100.0 * used / limit if limit else 0.0,
        "memory_limit_source": "host",
        "process_rss_bytes": 200 * MIB,
        "process_cpu_percent": 5.0,
        "process_threads": 4,
        "process_fds": 12,
        "pressure_level": PressureLevel.NORMAL,
        "active_sessions_rag": 0,
        "last_metrics_update_ts": 1_700_000_000.0,
    }
    data.update(overrides)
    return MetricsSnapshot(data)


def pressure_levels() -> SearchStrategy[PressureLevel]:
    """Any pressure level."""
    return st.sampled_from(PressureLevel)


@st.composite
def memory_figures(draw: st.DrawFn) -> tuple[int, int]:
    """``(available_bytes, limit_bytes)`` with ``0 <= available <= limit``."""
    limit = draw(st.integers(min_value=1, max_value=1 << 44))
    available = draw(st.integers(min_value=0, max_value=limit))
    return available, limit


@st.composite
def snapshots(draw: st.DrawFn) -> MetricsSnapshot:
    """A snapshot with drawn memory figures and pressure level."""
    available, limit = draw(memory_figures())
    return make_snapshot(
        memory_used_bytes=limit - available,
        memory_limit_bytes=limit,
        pressure_level=draw(pressure_levels()),
        process_rss_bytes=draw(st.integers(min_value=0, max_value=limit)),
    )
