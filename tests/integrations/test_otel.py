"""Tests of the OpenTelemetry integration, read back through the SDK's InMemoryMetricReader."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest

from resource_supervisor import PressureLevel, Supervisor
from resource_supervisor._config import build_settings
from resource_supervisor.testing import ScriptedSource

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)

from resource_supervisor.integrations.otel import SEMANTIC_METRICS, instrument
from tests._settings import quiet

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import Metric


@pytest.fixture
def reader() -> InMemoryMetricReader:
    """A fresh in-memory reader (shut down by the MeterProvider that owns it)."""
    return InMemoryMetricReader()


def collected(reader: InMemoryMetricReader) -> dict[str, Metric]:
    """Every metric of one collection, by name."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def value(metric: Metric) -> tuple[float, dict[str, object]]:
    """The one data point's value and attributes."""
    [point] = list(metric.data.data_points)
    assert isinstance(point, NumberDataPoint)
    return point.value, dict(point.attributes or {})


async def test_snapshot_is_exported_under_semantic_convention_names(
    reader: InMemoryMetricReader,
) -> None:
    """The semantic-convention metrics carry the snapshot's values with their units and
    kinds (ratios divided by 100); a collection never samples."""
    provider = MeterProvider(metric_readers=[reader])
    source = ScriptedSource()
    async with Supervisor(build_settings(monitoring_enabled=False), source=source) as sup:
        source.set(system_memory_percent=42.0, system_cpu_percent=50.0, process_threads=7)
        snap = await sup.update_metrics()
        handle = instrument(sup, provider)
        metrics = collected(reader)
        assert sup.metrics is snap  # collecting did not sample
        for name, _key, unit, kind, _scale, _attrs, _doc in SEMANTIC_METRICS:
            assert metrics[name].unit == unit
            assert isinstance(metrics[name].data, Gauge if kind == "gauge" else Sum)
        utilization, attributes = value(metrics["system.memory.utilization"])
        assert utilization == pytest.approx(0.42)
        assert attributes == {"system.memory.state": "used"}
        assert value(metrics["system.cpu.utilization"])[0] == pytest.approx(0.5)
        assert value(metrics["process.thread.count"])[0] == 7
        assert value(metrics["process.memory.usage"])[0] == snap.process_rss_bytes
        assert value(metrics["system.memory.limit"])[0] == snap["host_memory_total_bytes"]
        assert isinstance(metrics["process.memory.usage"].data, Sum)
        assert not metrics["process.memory.usage"].data.is_monotonic
        assert "process.memory.usage" in handle.names
    provider.shutdown()


async def test_experimental_names_levels_and_container_working_set(
    reader: InMemoryMetricReader,
) -> None:
    """The effective memory carries its limit source; the level follows pressure;
    container.memory.working_set appears only under a cgroup limit; counters are
    monotonic sums without _total; NaN values are left out."""
    provider = MeterProvider(metric_readers=[reader])
    source = ScriptedSource()
    async with Supervisor(build_settings(monitoring_enabled=False), source=source) as sup:
        source.set(
            memory_percent=95.0,
            memory_used_bytes=950,
            memory_limit_bytes=1000,
            memory_limit_source="host",
        )
        await sup.update_metrics()
        sup.register_metrics_provider("rag", lambda: {"latency_seconds": math.nan, "docs": 3})
        await sup.update_metrics()
        instrument(sup, provider)
        metrics = collected(reader)
        assert _container_missing(metrics)
        utilization, attributes = value(metrics["resource_supervisor.memory.utilization"])
        assert utilization == pytest.approx(0.95)
        assert attributes == {"resource_supervisor.memory.limit_source": "host"}
        assert value(metrics["resource_supervisor.pressure.level"])[0] == int(
            PressureLevel.CRITICAL
        )
        runs = metrics["resource_supervisor.cleanup_runs"]
        assert isinstance(runs.data, Sum)
        assert runs.data.is_monotonic
        assert value(metrics["resource_supervisor.rag_docs"])[0] == 3
        assert "resource_supervisor.rag_latency_seconds" not in metrics  # NaN: no point

        source.set(memory_percent=10.0, memory_used_bytes=100, memory_limit_source="cgroup_v1")
        await sup.update_metrics()
        metrics = collected(reader)
        assert value(metrics["container.memory.working_set"])[0] == 100
        assert value(metrics["resource_supervisor.memory.limit"]) == (
            1000,
            {"resource_supervisor.memory.limit_source": "cgroup_v1"},
        )
    provider.shutdown()


def _container_missing(metrics: dict[str, Metric]) -> bool:
    metric = metrics.get("container.memory.working_set")
    return metric is None or not list(metric.data.data_points)


async def test_instruments_go_quiet_when_the_supervisor_exits_or_on_close(
    reader: InMemoryMetricReader,
) -> None:
    """After the supervisor exits, or close(), callbacks report nothing (no stale values)."""
    provider = MeterProvider(metric_readers=[reader])
    async with Supervisor(quiet()) as sup:
        handle = instrument(sup, provider)
        assert collected(reader)["process.memory.usage"].data.data_points
        handle.close()
        handle.close()
        assert _quiet(reader)
    other = MeterProvider(metric_readers=[second := InMemoryMetricReader()])
    async with Supervisor(quiet()) as sup2:
        instrument(sup2, other)
    assert _quiet(second)
    other.shutdown()
    provider.shutdown()


def _quiet(reader: InMemoryMetricReader) -> bool:
    data = reader.get_metrics_data()
    if data is None:
        return True
    return all(
        not list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )
