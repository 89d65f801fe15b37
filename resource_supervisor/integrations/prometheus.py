"""
Prometheus exposition of the supervisor's snapshots (extra ``[prometheus]``).

Covers: :class:`SupervisorCollector`, a ``prometheus_client`` collector whose
``collect()`` only formats the latest snapshot (it never samples), :func:`register`,
and :func:`describe_key`, the pure rule that names each snapshot key as a metric
family ``resource_supervisor_<what>_<unit>``. Does not cover: sampling (see
:mod:`resource_supervisor._supervisor`) or serving HTTP (see
:mod:`resource_supervisor.integrations.fastapi`, whose ``/metrics`` route uses this
collector). Nothing is registered at import time.

Naming rules, applied to every numeric key of a snapshot:

* ``*_percent`` keys become ``*_ratio`` families, the value divided by 100.
* ``*_total`` keys are counters (the family is exposed as ``<name>_total``).
* ``gpu<i>_<what>`` keys share one family per ``<what>`` with a ``device`` label.
* Keys that no part of the library produces are provider metrics: one gauge family,
  ``resource_supervisor_provider_value``, labelled ``provider`` and ``metric``
  (the key split at its first ``_``).
* A few core keys get a clearer name (``memory_used_bytes`` is the working set).
* String values (``memory_limit_source``, ``process_lane_backend``, ...) become
  labels of the ``resource_supervisor_info`` gauge, whose value is 1.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

try:
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resource_supervisor.integrations.prometheus needs the 'prometheus' extra: "
        'pip install "resource-supervisor[prometheus]"'
    ) from exc

from .._exceptions import SupervisorClosedError
from .._metric_keys import CORE_PREFIXES

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from prometheus_client.registry import CollectorRegistry

    from .._peers import Peer
    from .._snapshot import MetricValue
    from .._supervisor import Supervisor

__all__ = (
    "PREFIX",
    "MetricDescription",
    "SupervisorCollector",
    "describe_key",
    "peer_families",
    "register",
    "snapshot_families",
)

PREFIX: Final = "resource_supervisor"
"""The namespace of every exported family."""


#: Keys about the container or host (the cgroup's memory is one number, not N): in
#: multi-process mode they are exported once, from the freshest snapshot.
_CONTAINER_PREFIXES: Final = ("system_", "memory_", "host_memory_", "cgroup_", "psi_", "container_")
_PER_PROCESS_KEYS: Final = frozenset({"container_is_largest"})

#: Core keys whose generic name would be unclear: their name, and the factor that
#: turns the value into the unit the name states.
_RENAMED: Final[Mapping[str, tuple[str, float]]] = {
    "system_memory_percent": ("system_memory_utilization_ratio", 0.01),
    "system_cpu_percent": ("system_cpu_utilization_ratio", 0.01),
    "memory_percent": ("memory_utilization_ratio", 0.01),
    "memory_used_bytes": ("memory_working_set_bytes", 1.0),
    "process_rss_bytes": ("process_resident_memory_bytes", 1.0),
    "process_cpu_percent": ("process_cpu_utilization_ratio", 0.01),
    "process_fds": ("process_open_fds", 1.0),
    # PSI averages are percentages of wall time in which tasks stalled
    "psi_memory_some_avg10": ("psi_memory_some_avg10_ratio", 0.01),
    "psi_memory_full_avg10": ("psi_memory_full_avg10_ratio", 0.01),
    "last_metrics_update_ts": ("last_update_timestamp_seconds", 1.0),
    "active_sessions_rag": ("active_sessions", 1.0),
    "gpu_memory_percent": ("gpu_memory_utilization_ratio", 0.01),
    "gpu_utilization_percent": ("gpu_utilization_ratio", 0.01),
}

#: Labels of the info family that would change on every level change: left out.
_INFO_SKIPPED: Final = frozenset({"pressure_level_name"})

_GPU_KEY: Final = re.compile(r"gpu(\d+)_(.+)")
_GPU_PATTERN: Final = r"gpu<i>_\2"
_LABEL_UNSAFE: Final = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, slots=True)
class MetricDescription:
    """
    How one snapshot key is exported.

    Attributes:
        name: The family name, without ``_total`` for counters.
        kind: ``"gauge"`` or ``"counter"``.
        labels: Label names and values that tell this key apart in its family.
        scale: Multiply the snapshot value by this (``0.01`` for percent).
        documentation: The ``# HELP`` text.
    """

    name: str
    kind: Literal["gauge", "counter"]
    labels: tuple[tuple[str, str], ...]
    scale: float
    documentation: str


def describe_key(key: str, providers: Sequence[str] = ()) -> MetricDescription:
    """
    Name the Prometheus family of snapshot key *key*. Pure.

    Args:
        key: A snapshot key (``"memory_percent"``, ``"gpu0_memory_used_bytes"``,
            ``"rag_cache_items"``).
        providers: Names of the registered providers, so that a provider key is
            split at the right underscore (``"rag_cache"`` + ``"items"``); without
            them it is split at the first one.

    Returns:
        Its family name, type, labels and scale.
    """
    gpu = _GPU_KEY.fullmatch(key)
    labels: tuple[tuple[str, str], ...] = ()
    if gpu is not None:
        what = f"gpu_{gpu.group(2)}"
        labels = (("device", gpu.group(1)),)
    elif key.startswith(CORE_PREFIXES):
        what = key
    else:
        owner = max((p for p in providers if key.startswith(f"{p}_")), key=len, default=None)
        if owner is not None:
            provider, metric = owner, key[len(owner) + 1 :]
        else:
            provider, _, metric = key.partition("_")
        return MetricDescription(
            name=f"{PREFIX}_provider_value",
            kind="gauge",
            labels=(("provider", provider), ("metric", metric)),
            scale=1.0,
            documentation="A metric of a registered metrics provider, as it reported it.",
        )
    scale = 1.0
    if what in _RENAMED:
        what, scale = _RENAMED[what]
    elif what.endswith("_percent"):
        what = what.removesuffix("_percent") + "_ratio"
        scale = 0.01
    kind: Literal["gauge", "counter"] = "gauge"
    if what.endswith("_total"):
        kind = "counter"
        what = what.removesuffix("_total")
    doc = f"Snapshot key {_GPU_KEY.sub(_GPU_PATTERN, key)}"
    if scale != 1.0:
        doc += " / 100"
    return MetricDescription(
        name=f"{PREFIX}_{what}", kind=kind, labels=labels, scale=scale, documentation=doc + "."
    )


def _numeric(value: MetricValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: export it as +-Inf, never fail
        return math.inf if value > 0 else -math.inf


def snapshot_families(
    snapshot: Mapping[str, MetricValue], providers: Sequence[str] = ()
) -> list[Metric]:
    """
    Format *snapshot* as metric families. Pure.

    Args:
        snapshot: A :class:`MetricsSnapshot` or any mapping of key to value.
        providers: Names of the registered providers (see :func:`describe_key`).

    Returns:
        One family per distinct name, each sample labelled as :func:`describe_key`
        says; plus ``resource_supervisor_info`` with the string values as labels.
    """
    families = _Families()
    families.add(snapshot, providers)
    return families.result()


def _is_container_key(key: str) -> bool:
    return key.startswith(_CONTAINER_PREFIXES) and key not in _PER_PROCESS_KEYS


def peer_families(peers: Sequence[Peer], providers: Sequence[str] = ()) -> list[Metric]:
    """
    Format the snapshots of every live process of a container as metric families. Pure.

    Keys about the container (memory, cgroup, PSI, system) appear once, from the
    freshest snapshot; every other key appears once per process, labelled ``pid``
    and ``worker`` (the server's worker index, or ``""``), so each process's counters
    are their own series and never seem to reset between scrapes.

    Args:
        peers: The live processes (see :meth:`Supervisor.peers`).
        providers: Names of the registered providers (see :func:`describe_key`).
    """
    families = _Families()
    if not peers:
        return []

    def stamp(peer: Peer) -> float:
        value = peer.snapshot.get("last_metrics_update_ts", 0.0)
        return float(value) if isinstance(value, int | float) else 0.0

    freshest = max(peers, key=stamp)
    families.add({k: v for k, v in freshest.snapshot.items() if _is_container_key(k)}, providers)
    for peer in peers:
        labels = (
            ("pid", str(peer.pid)),
            ("worker", "" if peer.worker is None else str(peer.worker)),
        )
        families.add(
            {k: v for k, v in peer.snapshot.items() if not _is_container_key(k)},
            providers,
            labels,
        )
    return families.result()


class _Families:
    """Families being built from one or more snapshots."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        self.info: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def add(
        self,
        snapshot: Mapping[str, MetricValue],
        providers: Sequence[str],
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        info: dict[str, str] = {}
        for key in sorted(snapshot):
            raw = snapshot[key]
            value = _numeric(raw)
            if value is None:
                if isinstance(raw, str) and key not in _INFO_SKIPPED:
                    info[_LABEL_UNSAFE.sub("_", key)] = raw
                continue
            description = describe_key(key, providers)
            labels = (*description.labels, *extra)
            label_names = [name for name, _ in labels]
            family = self.families.get(description.name)
            if family is None:
                kind = CounterMetricFamily if description.kind == "counter" else GaugeMetricFamily
                family = kind(description.name, description.documentation, labels=label_names)
                self.families[description.name] = family
            family.add_metric([label for _, label in labels], value * description.scale)
        if info:
            names = sorted(info)
            self.info.append(
                (
                    (*names, *(n for n, _ in extra)),
                    (*(info[n] for n in names), *(v for _, v in extra)),
                )
            )

    def result(self) -> list[Metric]:
        result: list[Metric] = list(self.families.values())
        if self.info:
            names = sorted({name for row, _ in self.info for name in row})
            family_info = GaugeMetricFamily(
                f"{PREFIX}_info",
                "Labels describing the supervisor's sources and lanes; always 1.",
                labels=names,
            )
            for row, values in self.info:
                given = dict(zip(row, values, strict=True))
                family_info.add_metric([given.get(name, "") for name in names], 1.0)
            result.append(family_info)
        return result


class SupervisorCollector(Collector):
    """
    A ``prometheus_client`` collector exporting the supervisor's latest snapshot.

    ``collect()`` formats :attr:`Supervisor.metrics` and never samples, so a scrape
    costs a few microseconds per metric and cannot block the event loop; the
    numbers are as fresh as ``monitoring_interval``. It exports nothing before the
    supervisor is entered and nothing after it exits (no stale values).

    Two collectors of the same supervisor are equal (and hash alike), so a registry
    holds at most one of them: registering one twice never doubles a family.

    Args:
        supervisor: The supervisor to export.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SupervisorCollector):
            return NotImplemented
        return other._supervisor is self._supervisor

    def __hash__(self) -> int:
        return hash((SupervisorCollector, id(self._supervisor)))

    def collect(self) -> Iterator[Metric]:
        """
        Yield the families of the latest snapshot.

        Returns:
            An iterator of metric families (empty before the first snapshot).
        """
        sup = self._supervisor
        if not sup.running:
            return iter(())
        try:
            snapshot = sup.metrics
        except SupervisorClosedError:  # entering: no first snapshot yet
            return iter(())
        peers = sup.peers()
        if peers:
            return iter(peer_families(peers, sup.provider_names))
        return iter(snapshot_families(snapshot, sup.provider_names))

    def describe(self) -> Iterator[Metric]:
        """
        Return nothing, so that registering never calls :meth:`collect` early.

        Returns:
            An empty iterator.
        """
        return iter(())


def _has_snapshot(supervisor: Supervisor) -> bool:
    try:
        supervisor.metrics  # noqa: B018  # raises before the first snapshot
    except SupervisorClosedError:
        return False
    return True


def register(
    supervisor: Supervisor, registry: CollectorRegistry | None = None
) -> SupervisorCollector:
    """
    Register a :class:`SupervisorCollector` for *supervisor*, until it exits.

    Idempotent: registering the same supervisor in the same registry again adds
    nothing. The registration ends when the supervisor exits (the collector is
    unregistered then), so an exited supervisor exports no stale values and a
    new supervisor can be registered in its place. Registering before entry is
    fine: the collector exports nothing until the first snapshot.

    Args:
        supervisor: The supervisor to export.
        registry: Where to register; ``None`` means ``prometheus_client``'s
            default ``REGISTRY``.

    Returns:
        The collector; ``registry.unregister(collector)`` removes it earlier.

    Raises:
        SupervisorClosedError: If *supervisor* has already exited.
    """
    target = registry if registry is not None else REGISTRY
    if not supervisor.running and _has_snapshot(supervisor):  # not before entry: exited
        raise SupervisorClosedError("supervisor (exited; register a running one)")
    collector = SupervisorCollector(supervisor)
    # An equal collector already there is kept: the registry maps collectors by
    # equality, and describe() names nothing, so nothing is doubled or refused.
    target.register(collector)

    def unregister() -> None:
        with contextlib.suppress(KeyError):  # removed already (by hand, or twice)
            target.unregister(collector)

    supervisor._call_at_exit(unregister)
    return collector
