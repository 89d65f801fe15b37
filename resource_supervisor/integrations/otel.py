"""
OpenTelemetry metrics: the supervisor's snapshot as observable instruments.

Needs the ``otel`` extra (``pip install "resource-supervisor[otel]"``, which brings
``opentelemetry-api`` only; the application picks and configures the SDK and its
exporters)::

    from resource_supervisor.integrations.otel import instrument

    async with Supervisor(settings) as sup:
        handle = instrument(sup)           # the global MeterProvider, or meter_provider=...

Covers: :func:`instrument` and :class:`SupervisorInstruments`: which instrument each
snapshot key becomes and its name, unit and kind. Every callback only formats the
latest snapshot (``sup.metrics``) and never samples, so a collection costs
microseconds and is as fresh as ``monitoring_interval``. Does not cover: sampling
(:mod:`resource_supervisor._sampler`) or the Prometheus exposition
(:mod:`.prometheus`).

Names. Where OpenTelemetry's semantic conventions define a metric for the value it
gets that name, unit and instrument kind (:data:`SEMANTIC_METRICS`):
``process.memory.usage``, ``process.thread.count``,
``process.unix.file_descriptor.count``, ``system.memory.utilization`` and
``system.memory.limit``, ``system.cpu.utilization``, and, inside a container (a
cgroup limit in force), ``container.memory.working_set``. The rest are experimental
names under ``resource_supervisor.``: the effective memory (``memory.usage``,
``memory.limit``, ``memory.utilization``, with the ``resource_supervisor.memory.limit_source``
attribute), ``pressure.level`` (0 NORMAL, 1 WARNING, 2 CRITICAL),
``sessions.active``, and every other numeric snapshot key as
``resource_supervisor.<key>``: keys ending ``_total`` become observable counters
(without the suffix), the others gauges; ``_bytes`` keys are in ``By``,
``_seconds`` in ``s``, and ``_percent`` keys are divided by 100 with unit ``1``.
Values that are NaN (not measured yet) are left out of the collection.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final, Literal

from .. import __version__
from .._snapshot import LABEL_KEYS

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resource_supervisor.integrations.otel needs the 'otel' extra: "
        "pip install 'resource-supervisor[otel]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from opentelemetry.metrics import Meter, MeterProvider

    from .._snapshot import MetricsSnapshot
    from .._supervisor import Supervisor

__all__ = ("SEMANTIC_METRICS", "SupervisorInstruments", "instrument")

Kind = Literal["gauge", "counter", "updowncounter"]

# name, snapshot key, unit, kind, scale, fixed attributes, description
_Spec = tuple[str, str, str, Kind, float, dict[str, str], str]

SEMANTIC_METRICS: Final[tuple[_Spec, ...]] = (
    (
        "process.memory.usage",
        "process_rss_bytes",
        "By",
        "updowncounter",
        1.0,
        {},
        "The amount of physical memory in use (RSS).",
    ),
    (
        "process.thread.count",
        "process_threads",
        "{thread}",
        "updowncounter",
        1.0,
        {},
        "Process threads count.",
    ),
    (
        "process.unix.file_descriptor.count",
        "process_fds",
        "{file_descriptor}",
        "updowncounter",
        1.0,
        {},
        "Number of unix file descriptors in use by the process.",
    ),
    (
        "system.memory.utilization",
        "system_memory_percent",
        "1",
        "gauge",
        0.01,
        {"system.memory.state": "used"},
        "Share of the host's memory in use.",
    ),
    (
        "system.memory.limit",
        "host_memory_total_bytes",
        "By",
        "updowncounter",
        1.0,
        {},
        "Total virtual memory available in the system.",
    ),
    (
        "system.cpu.utilization",
        "system_cpu_percent",
        "1",
        "gauge",
        0.01,
        {},
        "Share of the host's CPU time in use, all CPUs and modes together.",
    ),
)
"""The snapshot keys exported under semantic-convention names: (name, key, unit,
kind, scale, attributes, description)."""

_CONTAINER_WORKING_SET: Final = "container.memory.working_set"
_EXPERIMENTAL: Final[tuple[_Spec, ...]] = (
    (
        "resource_supervisor.memory.usage",
        "memory_used_bytes",
        "By",
        "updowncounter",
        1.0,
        {},
        "Working set counted against the effective memory limit.",
    ),
    (
        "resource_supervisor.memory.limit",
        "memory_limit_bytes",
        "By",
        "updowncounter",
        1.0,
        {},
        "Effective memory limit: the smaller of host memory and the cgroup limit.",
    ),
    (
        "resource_supervisor.memory.utilization",
        "memory_percent",
        "1",
        "gauge",
        0.01,
        {},
        "Working set as a share of the effective memory limit.",
    ),
    (
        "resource_supervisor.pressure.level",
        "pressure_level",
        "1",
        "gauge",
        1.0,
        {},
        "Pressure level: 0 NORMAL, 1 WARNING, 2 CRITICAL.",
    ),
    (
        "resource_supervisor.sessions.active",
        "active_sessions_rag",
        "{session}",
        "updowncounter",
        1.0,
        {},
        "Sessions open now.",
    ),
)
_LIMIT_SOURCE_ATTRIBUTE: Final = "resource_supervisor.memory.limit_source"
# Shown by a dedicated instrument above, or not a measurement.
_NOT_GENERIC: Final = frozenset({"last_metrics_update_ts"})


def _generic(key: str) -> _Spec:
    """The experimental instrument for any other numeric snapshot key."""
    if key.endswith("_total"):
        return (f"resource_supervisor.{key[: -len('_total')]}", key, "1", "counter", 1.0, {}, "")
    if key.endswith("_bytes"):
        return (f"resource_supervisor.{key}", key, "By", "gauge", 1.0, {}, "")
    if key.endswith(("_seconds", "_ts")):
        return (f"resource_supervisor.{key}", key, "s", "gauge", 1.0, {}, "")
    if key.endswith("_percent"):
        return (f"resource_supervisor.{key}", key, "1", "gauge", 0.01, {}, "")
    return (f"resource_supervisor.{key}", key, "1", "gauge", 1.0, {}, "")


class SupervisorInstruments:
    """
    The observable instruments that :func:`instrument` created for one supervisor.

    Callbacks report nothing once the supervisor has exited or after :meth:`close`
    (OpenTelemetry's API has no way to remove an instrument, so they stay
    registered and empty).
    """

    def __init__(self, supervisor: Supervisor, meter: Meter) -> None:
        """
        Private: use :func:`instrument`.

        Args:
            supervisor: The supervisor to read.
            meter: Where to create the instruments.
        """
        self._supervisor = supervisor
        self._closed = False
        self.names: tuple[str, ...] = ()
        """Names of the instruments created, in creation order."""
        snapshot = supervisor.metrics
        specs = [*SEMANTIC_METRICS, *_EXPERIMENTAL]
        specs.insert(
            len(SEMANTIC_METRICS),
            (
                _CONTAINER_WORKING_SET,
                "memory_used_bytes",
                "By",
                "updowncounter",
                1.0,
                {},
                "Container memory working set (only inside a memory cgroup limit).",
            ),
        )
        dedicated = {spec[1] for spec in specs}
        specs.extend(
            _generic(key)
            for key, value in snapshot.items()
            if key not in dedicated
            and key not in LABEL_KEYS
            and key not in _NOT_GENERIC
            and isinstance(value, int | float)
        )
        names: list[str] = []
        for name, key, unit, kind, scale, attributes, description in specs:
            callback = self._callback(name, key, scale, attributes)
            create = {
                "gauge": meter.create_observable_gauge,
                "counter": meter.create_observable_counter,
                "updowncounter": meter.create_observable_up_down_counter,
            }[kind]
            create(name, callbacks=[callback], unit=unit, description=description)
            names.append(name)
        self.names = tuple(names)

    def _snapshot(self) -> MetricsSnapshot | None:
        if self._closed or not self._supervisor.running:
            return None
        return self._supervisor.metrics

    def _callback(
        self, name: str, key: str, scale: float, attributes: dict[str, str]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            del options
            snapshot = self._snapshot()
            if snapshot is None or key not in snapshot:
                return ()
            value: object = snapshot[key]  # a label key never reaches here; be safe anyway
            if not isinstance(value, int | float) or math.isnan(value):
                return ()
            labels = dict(attributes)
            if name == _CONTAINER_WORKING_SET:
                if not str(snapshot.memory_limit_source).startswith("cgroup"):
                    return ()
            elif name.startswith("resource_supervisor.memory."):
                labels[_LIMIT_SOURCE_ATTRIBUTE] = snapshot.memory_limit_source
            number = int(value) if scale == 1.0 and isinstance(value, int) else value * scale
            return (Observation(number, labels),)

        return observe

    def close(self) -> None:
        """Stop reporting: every callback returns no observation from now on. Idempotent."""
        self._closed = True


def instrument(
    supervisor: Supervisor,
    meter_provider: MeterProvider | None = None,
    *,
    meter_name: str = "resource_supervisor",
) -> SupervisorInstruments:
    """
    Create observable instruments that report *supervisor*'s latest snapshot.

    Call it once per supervisor and meter provider, inside ``async with``, after
    registering metrics providers: the generic ``resource_supervisor.<key>``
    instruments are made for the keys of the snapshot at that moment.

    Args:
        supervisor: A running supervisor.
        meter_provider: The provider to use; ``None`` = OpenTelemetry's global one.
        meter_name: The meter's (instrumentation scope's) name.

    Returns:
        The :class:`SupervisorInstruments`; :meth:`~SupervisorInstruments.close`
        stops reporting (as the supervisor's exit does).

    Raises:
        SupervisorClosedError: If *supervisor* has no snapshot (not entered).
    """
    meter = metrics.get_meter(meter_name, __version__, meter_provider=meter_provider)
    return SupervisorInstruments(supervisor, meter)
