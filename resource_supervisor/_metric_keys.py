"""
The one registry of the library's own snapshot keys.

Covers: the keys every sample of the built-in sampler carries
(:data:`SAMPLER_KEYS`), those the supervisor adds to every snapshot
(:data:`SUPERVISOR_KEYS`), the ones a :class:`~._snapshot.MetricsSnapshot` refuses
to be built without (:data:`REQUIRED_KEYS`), the keys whose values are labels
(:data:`LABEL_KEYS`), and the namespaces under which every built-in key lives
(:data:`CORE_NAMESPACES`, :data:`CORE_PREFIXES`): the Prometheus collector tells a
built-in key from a provider's by them, and a provider named after their first
word is refused. Pure data; no I/O.

Does not cover: the keys' meaning (README, "Metrics") or how each is read
(:mod:`._sampler`, :mod:`._sources`) or exported (:mod:`.integrations`).
Adding a key under a new namespace: add the namespace here, and a test fails until
the sampler or the part that writes it, the snapshot and the exporters agree.
"""

from __future__ import annotations

from typing import Final

__all__ = (
    "CORE_NAMESPACES",
    "CORE_PREFIXES",
    "LABEL_KEYS",
    "REQUIRED_KEYS",
    "SAMPLER_KEYS",
    "SUPERVISOR_KEYS",
    "is_core_key",
)

SAMPLER_KEYS: Final[frozenset[str]] = frozenset(
    {
        "system_memory_percent",
        "system_cpu_percent",
        "memory_used_bytes",
        "memory_limit_bytes",
        "memory_percent",
        "memory_limit_source",
        "host_memory_total_bytes",
        "process_rss_bytes",
        "process_cpu_percent",
        "process_threads",
        "process_fds",
        "last_metrics_update_ts",
        "provider_failures_total",
        "provider_metrics_dropped_total",
        "sample_duration_seconds",
    }
)
"""Keys in every sample of the built-in sampler, whatever the host (a source it
cannot read reports host figures or zeros under the same keys)."""

SUPERVISOR_KEYS: Final[frozenset[str]] = frozenset(
    {
        "pressure_level",
        "pressure_level_name",
        "active_sessions_rag",
        "sessions_evicted_total",
        "sessions_close_failures_total",
        "stream_subscribers",
        "stream_dropped_total",
        "stream_refused_total",
        "cleanup_runs_total",
        "cleanup_handler_failures_total",
        "cleanup_handler_timeouts_total",
        "sample_failures_total",
        "gpu_count",
    }
)
"""Keys the supervisor adds to every snapshot, whatever its source."""

REQUIRED_KEYS: Final[tuple[str, ...]] = (
    "system_memory_percent",
    "system_cpu_percent",
    "memory_used_bytes",
    "memory_limit_bytes",
    "memory_percent",
    "memory_limit_source",
    "process_rss_bytes",
    "process_cpu_percent",
    "process_threads",
    "process_fds",
    "pressure_level",
    "active_sessions_rag",
    "last_metrics_update_ts",
)
"""Keys a snapshot cannot be built without: its typed accessors read them."""

LABEL_KEYS: Final[frozenset[str]] = frozenset(
    ("memory_limit_source", "pressure_level_name", "process_lane_backend", "process_lane_delivery")
)
"""Keys whose values are short labels (``str``); every other value is a number."""

CORE_NAMESPACES: Final[tuple[str, ...]] = (
    "active_sessions",
    "admission",
    "batch",
    "cgroup",
    "cleanup",
    "container",
    "dask",
    "default_thread_limiter",
    "gpu",
    "host_memory",
    "last_metrics",
    "memory",
    "pressure",
    "process",
    "provider",
    "psi",
    "sample",
    "sessions",
    "stream",
    "system",
    "thread_lane",
)
"""The namespaces of the built-in keys: each key starts with one and ``_``, or is
``gpu<i>_...`` for one GPU device."""

CORE_PREFIXES: Final[tuple[str, ...]] = tuple(f"{namespace}_" for namespace in CORE_NAMESPACES)
""":data:`CORE_NAMESPACES` with their ``_``, ready for ``str.startswith``."""


def is_core_key(key: str) -> bool:
    """Whether *key* lies in a built-in namespace (per-device GPU keys included). Pure."""
    if key.startswith(CORE_PREFIXES):
        return True
    head, _, rest = key.partition("_")
    return bool(rest) and head.startswith("gpu") and head[3:].isdigit()
