"""Tests for MetricsSnapshot and PressureLevel."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING

import pytest

from resource_supervisor._metric_keys import REQUIRED_KEYS
from resource_supervisor._snapshot import MetricsSnapshot, PressureLevel

if TYPE_CHECKING:
    from resource_supervisor._snapshot import MetricValue


def core(**overrides: MetricValue) -> dict[str, MetricValue]:
    data: dict[str, MetricValue] = dict.fromkeys(REQUIRED_KEYS, 0)
    data.update(
        memory_limit_source="cgroup_v2",
        memory_used_bytes=600,
        memory_limit_bytes=1000,
        memory_percent=60.0,
        pressure_level=1,
    )
    data.update(overrides)
    return data


def test_mapping_and_attribute_access() -> None:
    """A snapshot reads as a mapping and by attribute, with typed core accessors."""
    snap = MetricsSnapshot(core(rag_hits=3))
    assert snap["memory_percent"] == 60.0
    assert snap.get("active_sessions_rag", 7) == 0
    assert snap.get("missing", 5) == 5
    assert snap.rag_hits == 3
    assert snap.pressure_level is PressureLevel.WARNING
    assert snap.memory_available_bytes == 400
    assert "rag_hits" in snap
    assert len(snap) == len(REQUIRED_KEYS) + 1
    with pytest.raises(AttributeError):
        _ = snap.not_a_metric


def test_snapshot_is_immutable() -> None:
    """Neither attributes nor items can be set, and the source dict is copied."""
    data = core()
    snap = MetricsSnapshot(data)
    data["memory_percent"] = 99.0
    assert snap.memory_percent == 60.0
    with pytest.raises(AttributeError, match="immutable"):
        snap.memory_percent = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap["memory_percent"] = 1.0  # type: ignore[operator]


def test_missing_core_metric_is_rejected() -> None:
    """Building a snapshot without a core metric fails and names it."""
    data = core()
    del data["process_fds"]
    with pytest.raises(ValueError, match="process_fds"):
        MetricsSnapshot(data)


def test_snapshot_pickles() -> None:
    """A snapshot survives pickle (it may cross to worker processes)."""
    snap = MetricsSnapshot(core())
    again = pickle.loads(pickle.dumps(snap))
    assert dict(again) == dict(snap)
    assert again.pressure_level is PressureLevel.WARNING


def test_available_never_negative_and_levels_ordered() -> None:
    """Available memory is clamped at zero; levels are ordered and print by name."""
    snap = MetricsSnapshot(core(memory_used_bytes=2000))
    assert snap.memory_available_bytes == 0
    assert PressureLevel.NORMAL < PressureLevel.WARNING < PressureLevel.CRITICAL
    assert str(PressureLevel.CRITICAL) == "CRITICAL"
    assert "WARNING" in repr(MetricsSnapshot(core()))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"memory_limit_source": 2}, "memory_limit_source"),  # a label holding a number
        ({"process_lane_backend": 1.5}, "process_lane_backend"),
        ({"memory_percent": "60"}, "memory_percent"),  # a number holding a str
        ({"rag_hits": "3"}, "rag_hits"),
        ({"rag_hits": None}, "rag_hits"),  # neither a number nor a str
        ({"rag_hits": [3]}, "rag_hits"),
        # as many str values as label keys, but on the wrong keys
        ({"memory_limit_source": 2, "rag_hits": "3"}, "memory_limit_source.*rag_hits"),
    ],
)
def test_values_of_the_wrong_kind_are_rejected(overrides: dict[str, object], named: str) -> None:
    """A label key must hold a str, every other key a number; the error names the key."""
    with pytest.raises(ValueError, match=named):
        MetricsSnapshot(core(**overrides))  # type: ignore[arg-type]


def test_labels_and_numbers_are_accepted_in_any_order() -> None:
    """Every label key present as a str, numbers of every kind elsewhere: accepted."""
    snap = MetricsSnapshot(
        core(process_lane_backend="local", pressure_level_name="WARNING", rag_hits=True, x=1.5)
    )
    assert snap["process_lane_backend"] == "local"
    assert snap.pressure_level is PressureLevel.WARNING
