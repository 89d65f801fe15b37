"""Tests of the Prometheus collector: naming, units, labels, and a live supervisor."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from resource_supervisor._config import build_settings
from resource_supervisor._snapshot import MetricsSnapshot, PressureLevel
from resource_supervisor.integrations.prometheus import (
    PREFIX,
    SupervisorCollector,
    describe_key,
    register,
    snapshot_families,
)
from tests.strategies import make_snapshot

if TYPE_CHECKING:
    from collections.abc import Mapping

    from prometheus_client.samples import Sample

    from resource_supervisor._snapshot import MetricValue

RAG_LABELS = (("provider", "rag"), ("metric", "cache_items"))
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_UNITS = ("_bytes", "_ratio", "_seconds", "_total")

#: Every family of the supervisor that the exported names documented in
#: docs/integrations.md promise, with a plausible value.
RICH: dict[str, MetricValue] = {
    "host_memory_total_bytes": 8 * 2**30,
    "cgroup_memory_limit_bytes": 6 * 2**30,
    "psi_memory_some_avg10": 12.5,
    "psi_memory_full_avg10": 3.0,
    "provider_failures_total": 2,
    "sample_duration_seconds": 0.0003,
    "sample_failures_total": 0,
    "pressure_level_name": "WARNING",
    "pressure_level": 1,
    "sessions_evicted_total": 4,
    "stream_subscribers": 3,
    "stream_dropped_total": 7,
    "stream_refused_total": 11,
    "cleanup_runs_total": 5,
    "cleanup_handler_failures_total": 1,
    "cleanup_handler_timeouts_total": 0,
    "thread_lane_busy": 2,
    "thread_lane_capacity": 6,
    "thread_lane_queued": 0,
    "thread_lane_threads": 3,
    "thread_lane_completed_total": 1000,
    "thread_lane_failed_total": 3,
    "process_lane_backend": "dask",
    "process_lane_delivery": "at-most-once",
    "process_queue_depth": 4,
    "process_in_flight": 2,
    "process_completed_total": 50,
    "process_crashed_total": 1,
    "process_workers_live": 2,
    "dask_workers": 2,
    "dask_memory_used_bytes": 2**30,
    "dask_worst_worker_memory_ratio": 0.4,
    "dask_pressure_level": 0,
    "gpu_count": 2,
    "gpu_read_failures_total": 0,
    "gpu0_memory_used_bytes": 2**30,
    "gpu0_memory_total_bytes": 16 * 2**30,
    "gpu0_memory_percent": 6.25,
    "gpu0_utilization_percent": 40.0,
    "gpu1_memory_used_bytes": 2**31,
    "gpu1_memory_total_bytes": 16 * 2**30,
    "gpu1_memory_percent": 12.5,
    "rag_cache_items": 128,
    "rag_cache_bytes": 4096,
}


def _exposition(snapshot: Mapping[str, MetricValue]) -> str:
    registry = CollectorRegistry()

    class _Fixed:
        def collect(self) -> object:
            return iter(snapshot_families(snapshot))

    registry.register(_Fixed())  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _expected_sample(key: str) -> tuple[str, dict[str, str]]:
    description = describe_key(key)
    suffix = "_total" if description.kind == "counter" else ""
    return description.name + suffix, dict(description.labels)


def test_every_numeric_key_appears_exactly_once_with_its_value() -> None:
    """Each numeric snapshot key maps to one sample, whose value is the key's value scaled."""
    snapshot = make_snapshot(**RICH)
    samples = _samples(_exposition(snapshot))
    numeric = {
        k: v for k, v in snapshot.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in samples:
        if sample.name.endswith(("_created", "_info")):
            continue
        ident = (sample.name, tuple(sorted(sample.labels.items())))
        assert ident not in seen, f"duplicate sample {ident}"
        seen[ident] = sample.value
    assert len(seen) == len(numeric)
    for key, value in numeric.items():
        name, labels = _expected_sample(key)
        found = seen[(name, tuple(sorted(labels.items())))]
        assert found == pytest.approx(float(value) * describe_key(key).scale), key


def test_names_carry_prefix_and_units() -> None:
    """Every family is resource_supervisor_*, and unit-bearing keys keep a unit suffix."""
    snapshot = make_snapshot(**RICH)
    for family in text_string_to_metric_families(_exposition(snapshot)):
        assert family.name.startswith(PREFIX + "_")
    for key in snapshot:
        name = describe_key(key).name
        if (
            key.startswith("psi_")
            or re.match(r"gpu\d+_", key)
            or (
                key.endswith(("_bytes", "_percent", "_seconds", "_ratio"))
                and not key.startswith("rag_")
            )
        ):
            assert name.endswith(("_bytes", "_ratio", "_seconds")), (key, name)


@pytest.mark.parametrize(
    ("key", "name", "kind", "labels", "scale"),
    [
        ("memory_percent", "memory_utilization_ratio", "gauge", (), 0.01),
        ("memory_used_bytes", "memory_working_set_bytes", "gauge", (), 1.0),
        ("memory_limit_bytes", "memory_limit_bytes", "gauge", (), 1.0),
        ("cgroup_memory_limit_bytes", "cgroup_memory_limit_bytes", "gauge", (), 1.0),
        ("system_memory_percent", "system_memory_utilization_ratio", "gauge", (), 0.01),
        ("process_rss_bytes", "process_resident_memory_bytes", "gauge", (), 1.0),
        ("psi_memory_some_avg10", "psi_memory_some_avg10_ratio", "gauge", (), 0.01),
        ("last_metrics_update_ts", "last_update_timestamp_seconds", "gauge", (), 1.0),
        ("cleanup_runs_total", "cleanup_runs", "counter", (), 1.0),
        ("stream_dropped_total", "stream_dropped", "counter", (), 1.0),
        ("stream_refused_total", "stream_refused", "counter", (), 1.0),
        ("thread_lane_busy", "thread_lane_busy", "gauge", (), 1.0),
        ("gpu3_memory_used_bytes", "gpu_memory_used_bytes", "gauge", (("device", "3"),), 1.0),
        ("gpu0_memory_percent", "gpu_memory_utilization_ratio", "gauge", (("device", "0"),), 0.01),
        ("gpu_count", "gpu_count", "gauge", (), 1.0),
        ("rag_cache_items", "provider_value", "gauge", RAG_LABELS, 1.0),
    ],
)  # fmt: skip
def test_describe_key_names(
    key: str, name: str, kind: str, labels: tuple[tuple[str, str], ...], scale: float
) -> None:
    """The documented names: units in the name, percent as ratio, gpu index as a label."""
    description = describe_key(key)
    assert (description.name, description.kind, description.labels, description.scale) == (
        f"{PREFIX}_{name}",
        kind,
        labels,
        scale,
    )


@given(st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True))
def test_describe_key_always_gives_a_valid_name(key: str) -> None:
    """Any snapshot key (core or provider) yields a valid Prometheus name and labels."""
    description = describe_key(key)
    assert _NAME.fullmatch(description.name)
    assert description.name.startswith(PREFIX + "_")
    assert not description.name.endswith("_total")
    for label, _ in description.labels:
        assert _NAME.fullmatch(label)


def test_string_values_become_info_labels() -> None:
    """String keys are labels of resource_supervisor_info (value 1); the level name is not."""
    snapshot = make_snapshot(**RICH)
    families = {f.name: f for f in text_string_to_metric_families(_exposition(snapshot))}
    info = families["resource_supervisor_info"].samples
    assert len(info) == 1
    assert info[0].value == 1.0
    assert info[0].labels["process_lane_backend"] == "dask"
    assert info[0].labels["memory_limit_source"] == snapshot.memory_limit_source
    assert "pressure_level_name" not in info[0].labels


def test_pressure_level_is_exported_as_number() -> None:
    """The pressure level is a gauge holding 0, 1 or 2."""
    snapshot = make_snapshot(pressure_level=PressureLevel.CRITICAL)
    samples = {s.name: s.value for s in _samples(_exposition(snapshot))}
    assert samples["resource_supervisor_pressure_level"] == 2.0


async def test_collector_formats_the_running_supervisors_snapshot() -> None:
    """collect() exports the supervisor's latest snapshot and never samples by itself."""
    from resource_supervisor._supervisor import Supervisor

    settings = build_settings(monitoring_enabled=False)
    async with Supervisor(settings) as sup:
        sup.register_metrics_provider("rag", lambda: {"cache_items": 42})
        sup.register_metrics_provider("vector_store", lambda: {"docs": 7})
        snap = await sup.update_metrics()
        registry = CollectorRegistry()
        collector = register(sup, registry)
        assert isinstance(collector, SupervisorCollector)
        text = generate_latest(registry).decode()
        again = generate_latest(registry).decode()
        assert sup.metrics is snap  # scraping took no sample
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for s in _samples(text)
            if s.name != "resource_supervisor_info"
        }
        assert samples[("resource_supervisor_memory_working_set_bytes", ())] == float(
            snap.memory_used_bytes
        )
        provider_key = (f"{PREFIX}_provider_value", tuple(sorted(RAG_LABELS)))
        assert samples[provider_key] == 42.0
        # a provider name with an underscore is split at the right place
        store_key = (
            f"{PREFIX}_provider_value",
            (("metric", "docs"), ("provider", "vector_store")),
        )
        assert samples[store_key] == 7.0
        assert samples[("resource_supervisor_last_update_timestamp_seconds", ())] == pytest.approx(
            snap.last_metrics_update_ts
        )
        assert text == again
        registry.unregister(collector)


def test_collector_before_entry_exports_nothing() -> None:
    """A supervisor not yet entered has no snapshot: the collector yields no family."""
    from resource_supervisor._supervisor import Supervisor

    collector = SupervisorCollector(Supervisor(build_settings(monitoring_enabled=False)))
    assert list(collector.collect()) == []
    assert list(collector.describe()) == []


def test_importing_registers_nothing() -> None:
    """Importing the module leaves the default registry without our families."""
    from prometheus_client import REGISTRY

    names = {f.name for f in REGISTRY.collect()}
    assert not any(name.startswith(PREFIX) for name in names)


def test_exposition_of_a_plain_snapshot_parses() -> None:
    """A snapshot with only the core metrics round-trips through the text parser."""
    snapshot = MetricsSnapshot(dict(make_snapshot()))
    families = list(text_string_to_metric_families(_exposition(snapshot)))
    assert families


def _family_names(registry: CollectorRegistry) -> list[str]:
    return [f.name for f in registry.collect() if f.name.startswith(PREFIX)]


async def test_register_twice_exports_each_family_once() -> None:
    """register(sup) is idempotent per registry: a second call (or a second
    collector of the same supervisor) adds nothing, so no family is doubled."""
    from resource_supervisor._supervisor import Supervisor

    async with Supervisor(build_settings(monitoring_enabled=False)) as sup:
        registry = CollectorRegistry()
        first = register(sup, registry)
        once = _family_names(registry)
        second = register(sup, registry)
        registry.register(SupervisorCollector(sup))
        assert second == first
        assert first != object()
        assert _family_names(registry) == once
        assert len(once) == len(set(once))
        # Another supervisor's collector is a different collector.
        async with Supervisor(build_settings(monitoring_enabled=False)) as other:
            register(other, registry)
            assert len(_family_names(registry)) == 2 * len(once)


async def test_registration_ends_with_the_supervisor() -> None:
    """Once the supervisor exits, its collector is unregistered and exports no stale
    values; registering an exited supervisor is an error; a new one registers."""
    from resource_supervisor._exceptions import SupervisorClosedError
    from resource_supervisor._supervisor import Supervisor

    registry = CollectorRegistry()
    early = Supervisor(build_settings(monitoring_enabled=False))
    collector = register(early, registry)  # before entry: exports nothing yet
    assert _family_names(registry) == []
    async with early:
        assert _family_names(registry)
    assert _family_names(registry) == []
    assert list(collector.collect()) == []
    with pytest.raises(SupervisorClosedError):
        register(early, registry)
    # The registry no longer holds it: unregistering it again fails as for any stranger.
    with pytest.raises(KeyError):
        registry.unregister(collector)

    async with Supervisor(build_settings(monitoring_enabled=False)) as sup:
        register(sup, registry)
        register(sup, registry)
        assert _family_names(registry)
    assert _family_names(registry) == []


async def test_manually_registered_collector_of_an_exited_supervisor_is_silent() -> None:
    """A collector registered by hand (not through register) exports nothing once its
    supervisor exited, rather than its last snapshot."""
    from resource_supervisor._supervisor import Supervisor

    registry = CollectorRegistry()
    async with Supervisor(build_settings(monitoring_enabled=False)) as sup:
        registry.register(SupervisorCollector(sup))
        assert _family_names(registry)
    assert _family_names(registry) == []


async def test_a_failing_exit_callback_does_not_stop_the_exit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An integration's exit callback that raises is logged; the others still run and
    the supervisor still closes."""
    from resource_supervisor._supervisor import Supervisor

    registry = CollectorRegistry()
    sup = Supervisor(build_settings(monitoring_enabled=False))
    async with sup:

        def broken() -> None:
            raise RuntimeError("boom")

        sup._call_at_exit(broken)
        register(sup, registry)
    assert _family_names(registry) == []
    assert "exit callback" in caplog.text
    with pytest.raises(Exception, match="not running"):
        sup.executors  # noqa: B018


def test_a_value_beyond_float_range_never_breaks_the_scrape() -> None:
    """An int like 10**400 in a snapshot is exported as +Inf/-Inf; the rest still exports."""
    text = _exposition(make_snapshot(rag_huge=10**400, rag_low=-(10**400), rag_ok=3))
    values = {(s.name, s.labels.get("metric")): s.value for s in _samples(text)}
    provider = "resource_supervisor_provider_value"
    assert values[(provider, "huge")] == float("inf")
    assert values[(provider, "low")] == float("-inf")
    assert values[(provider, "ok")] == 3


def test_dropped_provider_metrics_are_a_core_counter() -> None:
    """provider_metrics_dropped_total is exported as a counter of the supervisor itself."""
    description = describe_key("provider_metrics_dropped_total", ["rag"])
    assert (description.name, description.kind) == (
        "resource_supervisor_provider_metrics_dropped",
        "counter",
    )
