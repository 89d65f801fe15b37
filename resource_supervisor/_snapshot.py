"""
The immutable metrics snapshot and the pressure level.

Covers: :class:`PressureLevel` and :class:`MetricsSnapshot`, a read-only mapping of
metric name to value with attribute access. Does not cover: how the values are read
(:mod:`._sampler`, :mod:`._sources`) or graded (:mod:`._policy`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from itertools import repeat
from types import MappingProxyType
from typing import Final, Literal, TypeAlias, overload

from ._metric_keys import LABEL_KEYS, REQUIRED_KEYS

__all__ = ("LABEL_KEYS", "LabelKey", "MetricValue", "MetricsSnapshot", "PressureLevel")

MetricValue: TypeAlias = float | int | str
"""A value in a snapshot: a number, or a short label such as ``memory_limit_source``."""


LabelKey: TypeAlias = Literal[
    "memory_limit_source", "pressure_level_name", "process_lane_backend", "process_lane_delivery"
]
"""The keys whose values are short labels (``str``); every other value is a number
(:data:`LABEL_KEYS`, from the key registry :mod:`._metric_keys`)."""


class PressureLevel(enum.IntEnum):
    """
    How close the service is to its memory budget. Ordered: ``NORMAL < WARNING < CRITICAL``.
    """

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2

    def __str__(self) -> str:
        return self.name


_REQUIRED: Final = REQUIRED_KEYS
_REQUIRED_SET: Final = frozenset(REQUIRED_KEYS)
_NUMBER_OR_STR: Final = (int, float, str)
# Endless and stateless: map() stops at the values' end, so both are shared by every call.
_ANY_KIND: Final = repeat(_NUMBER_OR_STR)
_STR_KIND: Final = repeat(str)


class MetricsSnapshot(Mapping[str, MetricValue]):
    """
    One immutable sample of every metric, as a read-only mapping.

    Keys are metric names (``"system_memory_percent"``); values are numbers, or a
    short label for a few keys (``memory_limit_source``). Provider metrics are
    namespaced ``"<provider>_<metric>"``. The common metrics are also typed
    attributes (``snap.memory_percent``); any key can be read as an attribute.

    A snapshot never changes after it is built: hand it to any task or thread.
    """

    __slots__ = ("_data",)
    _data: Mapping[str, MetricValue]

    def __init__(self, data: Mapping[str, MetricValue]) -> None:
        """
        Build a snapshot from *data*, copied.

        Args:
            data: Metric name to value. Must include every core metric.

        Raises:
            ValueError: If a core metric is missing, a label key holds a number, or
                another key holds a non-number.
        """
        copy = dict(data)
        keys = copy.keys()
        if not keys >= _REQUIRED_SET:
            missing = [key for key in _REQUIRED if key not in copy]
            raise ValueError(f"snapshot is missing core metrics: {', '.join(missing)}")
        # Checked in C alone, no Python frame (a snapshot is built on every sample):
        # each value is a number or a str, and the str ones are exactly the label keys.
        values = copy.values()
        present = keys & LABEL_KEYS
        if not (
            all(map(isinstance, values, _ANY_KIND))
            and sum(map(isinstance, values, _STR_KIND)) == len(present)
            and all(map(isinstance, map(copy.__getitem__, present), _STR_KIND))
        ):
            labels = [k for k in present if not isinstance(copy[k], str)]
            numbers = [
                k for k, v in copy.items() if k not in LABEL_KEYS and not isinstance(v, int | float)
            ]
            raise ValueError(
                f"snapshot values of the wrong kind: labels {labels} must be str, "
                f"metrics {numbers} must be numbers"
            )
        level = copy["pressure_level"]
        if type(level) is not PressureLevel:  # the supervisor's is one already
            copy["pressure_level"] = PressureLevel(int(level))
        object.__setattr__(self, "_data", MappingProxyType(copy))

    # -- Mapping ---------------------------------------------------------------
    # Label keys give str, every other key a number, so `snap["memory_percent"] > 80`
    # type-checks without casts.
    @overload
    def __getitem__(self, key: LabelKey) -> str: ...  # type: ignore[overload-overlap]
    @overload
    def __getitem__(self, key: str) -> float: ...
    def __getitem__(self, key: str) -> MetricValue:
        return self._data[key]

    @overload  # type: ignore[override]
    def get(self, key: LabelKey, /) -> str | None: ...  # type: ignore[overload-overlap]
    @overload
    def get(self, key: LabelKey, default: str, /) -> str: ...
    @overload
    def get(self, key: str, /) -> float | None: ...
    @overload
    def get(self, key: str, default: float, /) -> float: ...
    def get(self, key: str, default: MetricValue | None = None, /) -> MetricValue | None:
        """
        The value of *key*, or *default* when the snapshot has no such metric.

        Args:
            key: A metric name.
            default: Returned when *key* is absent.

        Returns:
            A ``str`` for label keys (:data:`LABEL_KEYS`), else a number.
        """
        return self._data.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> MetricValue:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MetricsSnapshot is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("MetricsSnapshot is immutable")

    def __reduce__(self) -> tuple[type[MetricsSnapshot], tuple[dict[str, MetricValue]]]:
        return (MetricsSnapshot, (dict(self._data),))

    def __repr__(self) -> str:
        return (
            f"MetricsSnapshot(level={self.pressure_level.name}, "
            f"memory_percent={self.memory_percent:.1f}, keys={len(self._data)})"
        )

    # -- typed accessors for the core metrics ----------------------------------
    @property
    def pressure_level(self) -> PressureLevel:
        """The graded pressure level when this snapshot was published."""
        value = self._data["pressure_level"]
        assert isinstance(value, PressureLevel)
        return value

    @property
    def memory_percent(self) -> float:
        """Working set as a percent of the effective memory limit."""
        return float(self._data["memory_percent"])

    @property
    def memory_used_bytes(self) -> int:
        """Working set in bytes (cgroup usage minus inactive file cache, or host used)."""
        return int(self._data["memory_used_bytes"])

    @property
    def memory_limit_bytes(self) -> int:
        """The effective limit: the smaller of host memory and the cgroup limit."""
        return int(self._data["memory_limit_bytes"])

    @property
    def memory_available_bytes(self) -> int:
        """``memory_limit_bytes - memory_used_bytes``, never negative."""
        return max(0, self.memory_limit_bytes - self.memory_used_bytes)

    @property
    def memory_limit_source(self) -> str:
        """Where the limit comes from: ``"host"``, ``"cgroup_v1"`` or ``"cgroup_v2"``."""
        return str(self._data["memory_limit_source"])

    @property
    def system_cpu_percent(self) -> float:
        """System-wide CPU use in percent since the previous sample."""
        return float(self._data["system_cpu_percent"])

    @property
    def system_memory_percent(self) -> float:
        """Host memory use in percent (``psutil.virtual_memory().percent``)."""
        return float(self._data["system_memory_percent"])

    @property
    def process_rss_bytes(self) -> int:
        """Resident set size of this process."""
        return int(self._data["process_rss_bytes"])

    @property
    def active_sessions_rag(self) -> int:
        """Sessions open in the session registry."""
        return int(self._data["active_sessions_rag"])

    @property
    def last_metrics_update_ts(self) -> float:
        """Wall-clock time (``time.time()``) the sample was taken."""
        return float(self._data["last_metrics_update_ts"])
