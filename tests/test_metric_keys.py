"""
The key registry against the parts that write and read the keys: a real sampler, a
real supervisor's snapshot, the snapshot's own checks and the Prometheus collector.
Adding a key or namespace in one place only makes one of these fail.
"""

from __future__ import annotations

import typing

import pytest

from resource_supervisor._metric_keys import (
    CORE_NAMESPACES,
    LABEL_KEYS,
    REQUIRED_KEYS,
    SAMPLER_KEYS,
    SUPERVISOR_KEYS,
    is_core_key,
)
from resource_supervisor._provider_output import RESERVED_PROVIDER_NAMES
from resource_supervisor._sampler import Sampler
from resource_supervisor._snapshot import LabelKey, MetricsSnapshot
from resource_supervisor.integrations.prometheus import PREFIX, describe_key

if typing.TYPE_CHECKING:
    from resource_supervisor import Supervisor


async def test_a_real_snapshot_carries_every_registered_key_in_a_registered_namespace(
    supervisor: Supervisor,
) -> None:
    """Every registered key is in a real snapshot, and every key of it is a core key."""
    snap = await supervisor.update_metrics()
    keys = set(snap)
    registered = SAMPLER_KEYS | SUPERVISOR_KEYS
    assert sorted(registered - keys) == []
    strays = sorted(key for key in keys if not is_core_key(key))
    assert strays == []
    # the collector exports each as a library family, never as a provider's value
    as_provider = sorted(
        key for key in keys if describe_key(key).name == f"{PREFIX}_provider_value"
    )
    assert as_provider == []
    for key in keys & LABEL_KEYS:
        assert isinstance(snap[key], str), key


async def test_a_bare_sampler_writes_every_sampler_key() -> None:
    """The sampler alone (no supervisor) writes the keys registered as its own."""
    sampler = Sampler()
    sampler.open()
    try:
        data = await sampler.sample()
    finally:
        sampler.close()
    assert set(data) >= SAMPLER_KEYS, sorted(SAMPLER_KEYS - set(data))
    assert not SUPERVISOR_KEYS & set(data)


def test_required_label_and_namespace_sets_agree() -> None:
    """Required keys come from the sampler or the supervisor; labels are typed; names reserved."""
    assert set(REQUIRED_KEYS) <= SAMPLER_KEYS | SUPERVISOR_KEYS
    assert set(typing.get_args(LabelKey)) == LABEL_KEYS
    for key in SAMPLER_KEYS | SUPERVISOR_KEYS | LABEL_KEYS:
        assert is_core_key(key), key
    for namespace in CORE_NAMESPACES:
        assert namespace.split("_", 1)[0] in RESERVED_PROVIDER_NAMES, namespace


def test_a_snapshot_refuses_each_missing_required_key() -> None:
    """MetricsSnapshot checks exactly the registry's required keys."""
    full = dict.fromkeys(REQUIRED_KEYS, 0) | {"memory_limit_source": "host"}
    MetricsSnapshot(full)
    for key in REQUIRED_KEYS:
        with pytest.raises(ValueError, match=key):
            MetricsSnapshot({k: v for k, v in full.items() if k != key})


@pytest.mark.parametrize(
    ("key", "core"),
    [
        ("gpu0_memory_used_bytes", True),
        ("gpu12_utilization_percent", True),
        ("gpu_count", True),
        ("gpux_memory", False),
        ("gpu0", False),
        ("rag_cache_items", False),
        ("default_thread_limiter_busy", True),
    ],
)
def test_is_core_key(key: str, core: bool) -> None:
    """Per-device GPU keys are core; a provider's key is not."""
    assert is_core_key(key) is core
