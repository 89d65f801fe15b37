"""Tests for batch sizing and memory reclaim (resource_supervisor._memory)."""

from __future__ import annotations

import gc
import logging
import weakref
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._cleanup import CleanupDispatcher, CleanupRequest
from resource_supervisor._memory import MemoryAdvisor, batch_size_for
from resource_supervisor._snapshot import PressureLevel
from tests._loop_guard import blocking_setup
from tests.strategies import GIB, MIB, make_snapshot, memory_figures, pressure_levels

if TYPE_CHECKING:
    from collections.abc import Iterator

NORMAL = CleanupRequest(aggressive=False, level=PressureLevel.WARNING, reason="test", snapshot=None)
AGGRESSIVE = CleanupRequest(
    aggressive=True, level=PressureLevel.CRITICAL, reason="test", snapshot=None
)
W, C, N = PressureLevel.WARNING, PressureLevel.CRITICAL, PressureLevel.NORMAL


@pytest.mark.parametrize(
    ("available", "limit", "level", "per_item", "expected"),
    [
        (8 * GIB, 8 * GIB, N, None, 64),  # all free
        (4 * GIB, 8 * GIB, N, None, 64),  # half free: still full size
        (2 * GIB, 8 * GIB, N, None, 32),  # a quarter free: half size
        (1 * GIB, 8 * GIB, N, None, 16),  # an eighth free: quarter size, at the minimum
        (0, 8 * GIB, N, None, 16),  # nothing free: minimum
        (8 * GIB, 8 * GIB, W, None, 32),  # WARNING halves
        (2 * GIB, 8 * GIB, W, None, 16),  # WARNING and little free
        (8 * GIB, 8 * GIB, C, None, 16),  # CRITICAL: minimum
        (8 * GIB, 8 * GIB, N, 100 * MIB, 40),  # 4 GiB usable / 100 MiB per item
        (8 * GIB, 8 * GIB, N, 1 * MIB, 64),  # small items: base
        (1 * GIB, 8 * GIB, N, 1 * GIB, 16),  # huge items: still the minimum
        (16 * GIB, 8 * GIB, N, None, 64),  # more free than the limit: capped at base
    ],
)
def test_batch_size_table(
    available: int, limit: int, level: PressureLevel, per_item: int | None, expected: int
) -> None:
    """Free fraction, pressure level and item size each scale the batch as documented."""
    assert (
        batch_size_for(
            base_batch_size=64,
            min_batch_size=16,
            available_bytes=available,
            limit_bytes=limit,
            level=level,
            per_item_bytes=per_item,
        )
        == expected
    )


@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"base_batch_size": 0}, "base_batch_size"),
        ({"min_batch_size": 0}, "min_batch_size"),
        ({"min_batch_size": 65}, "min_batch_size"),
        ({"available_bytes": -1}, "available_bytes"),
        ({"limit_bytes": 0}, "limit_bytes"),
        ({"per_item_bytes": 0}, "per_item_bytes"),
    ],
)
def test_batch_size_rejects_bad_arguments(overrides: dict[str, int], argument: str) -> None:
    """Invalid arguments raise ValueError naming the argument."""
    arguments: dict[str, int] = {
        "base_batch_size": 64,
        "min_batch_size": 16,
        "available_bytes": GIB,
        "limit_bytes": 2 * GIB,
    }
    arguments.update(overrides)
    with pytest.raises(ValueError, match=argument):
        batch_size_for(level=N, **arguments)


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int]:
    base = draw(st.integers(min_value=1, max_value=100_000))
    return base, draw(st.integers(min_value=1, max_value=base))


per_items = st.none() | st.integers(min_value=1, max_value=1 << 40)


@given(sizes=sizes(), figures=memory_figures(), level=pressure_levels(), per_item=per_items)
def test_batch_size_stays_within_bounds(
    sizes: tuple[int, int], figures: tuple[int, int], level: PressureLevel, per_item: int | None
) -> None:
    """The batch size is never below the minimum nor above the base."""
    base, minimum = sizes
    available, limit = figures
    size = batch_size_for(
        base_batch_size=base,
        min_batch_size=minimum,
        available_bytes=available,
        limit_bytes=limit,
        level=level,
        per_item_bytes=per_item,
    )
    assert minimum <= size <= base
    if per_item is not None and size > minimum:
        assert size * per_item <= available // 2


@given(
    sizes=sizes(),
    figures=memory_figures(),
    more=st.integers(min_value=0, max_value=1 << 44),
    level=pressure_levels(),
    per_item=per_items,
)
def test_batch_size_never_shrinks_with_more_free_memory(
    sizes: tuple[int, int],
    figures: tuple[int, int],
    more: int,
    level: PressureLevel,
    per_item: int | None,
) -> None:
    """More free memory (same limit, level and item size) never gives a smaller batch."""
    base, minimum = sizes
    available, limit = figures

    def size(free: int) -> int:
        return batch_size_for(
            base_batch_size=base,
            min_batch_size=minimum,
            available_bytes=free,
            limit_bytes=limit,
            level=level,
            per_item_bytes=per_item,
        )

    assert size(available) <= size(min(limit, available + more))


@given(sizes=sizes(), figures=memory_figures(), per_item=per_items)
def test_batch_size_never_grows_with_pressure(
    sizes: tuple[int, int], figures: tuple[int, int], per_item: int | None
) -> None:
    """A higher pressure level never gives a larger batch; CRITICAL gives the minimum."""
    base, minimum = sizes
    available, limit = figures
    by_level = [
        batch_size_for(
            base_batch_size=base,
            min_batch_size=minimum,
            available_bytes=available,
            limit_bytes=limit,
            level=level,
            per_item_bytes=per_item,
        )
        for level in PressureLevel
    ]
    assert by_level == sorted(by_level, reverse=True)
    assert by_level[-1] == minimum


def test_optimize_batch_size_reads_latest_snapshot() -> None:
    """optimize_batch_size grades the snapshot current at each call."""
    current = [make_snapshot(memory_used_bytes=1 * GIB, memory_limit_bytes=8 * GIB)]
    advisor = MemoryAdvisor(lambda: current[0])
    assert advisor.optimize_batch_size() == 64
    assert advisor.optimize_batch_size(base_batch_size=10, min_batch_size=2) == 10
    current[0] = make_snapshot(pressure_level=PressureLevel.WARNING)
    assert advisor.optimize_batch_size() == 32
    current[0] = make_snapshot(memory_used_bytes=7 * GIB, pressure_level=PressureLevel.CRITICAL)
    assert advisor.optimize_batch_size() == 16
    current[0] = make_snapshot(memory_used_bytes=0)
    assert advisor.optimize_batch_size(per_item_bytes=1 * GIB) == 16
    assert advisor.optimize_batch_size(per_item_bytes=128 * MIB) == 32  # 4 GiB / 128 MiB


def test_optimize_batch_size_validates_arguments() -> None:
    """optimize_batch_size rejects a minimum above the base, naming the argument."""
    advisor = MemoryAdvisor(make_snapshot)
    with pytest.raises(ValueError, match="min_batch_size"):
        advisor.optimize_batch_size(base_batch_size=8, min_batch_size=16)


class AsyncCache:
    """A cache that frees itself through `async def cleanup(request)`."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {1: b"x"}
        self.requests: list[CleanupRequest] = []

    async def cleanup(self, request: CleanupRequest) -> None:
        await anyio.lowlevel.checkpoint()
        self.requests.append(request)
        self.data.clear()

    def clear(self) -> None:  # pragma: no cover - cleanup() is preferred
        raise AssertionError("cleanup() should have been used")


async def test_normal_reclaim_skips_aggressive_only_caches() -> None:
    """Normal reclaim clears ordinary caches only; aggressive reclaim clears all."""
    advisor = MemoryAdvisor(make_snapshot)
    cheap: dict[str, int] = {"a": 1}
    costly: dict[str, int] = {"b": 2}
    via_cleanup = AsyncCache()
    advisor.register_cache(cheap, name="cheap")
    advisor.register_cache(costly, name="costly", aggressive_only=True)
    advisor.register_cache(via_cleanup)
    await advisor.reclaim(NORMAL)
    assert (cheap, costly, via_cleanup.data) == ({}, {"b": 2}, {})
    assert via_cleanup.requests == [NORMAL]
    await advisor.reclaim(AGGRESSIVE)
    assert costly == {}
    stats = advisor.statistics()
    assert (stats.reclaims, stats.caches, stats.caches_cleared) == (2, 3, 5)


async def test_failing_cache_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """A cache whose clear() raises is logged and counted; the others are still cleared."""

    class Broken:
        def clear(self) -> None:
            raise OSError("disk gone")

    advisor = MemoryAdvisor(make_snapshot)
    advisor.register_cache(Broken())
    other = {"k": "v"}
    advisor.register_cache(other)
    with caplog.at_level(logging.WARNING, logger="resource_supervisor.memory"):
        await advisor.reclaim(NORMAL)
    assert other == {}
    [record] = caplog.records
    assert "'Broken'" in record.getMessage()
    assert record.exc_info is not None
    stats = advisor.statistics()
    assert (stats.caches_cleared, stats.cache_failures, stats.reclaims) == (1, 1, 1)


def test_register_cache_validates_and_unregisters() -> None:
    """register_cache rejects non-caches and duplicate names; unregister is idempotent."""
    advisor = MemoryAdvisor(make_snapshot)
    with pytest.raises(TypeError, match="clear"):
        advisor.register_cache(object())
    unregister = advisor.register_cache({})
    with pytest.raises(ValueError, match="name="):
        advisor.register_cache({})
    unregister()
    unregister()
    advisor.register_cache({})
    assert advisor.statistics().caches == 1


async def test_cancelled_reclaim_clears_nothing() -> None:
    """A reclaim cancelled before it starts clears no cache and is not counted."""
    advisor = MemoryAdvisor(make_snapshot)
    cache = {"k": 1}
    advisor.register_cache(cache)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await advisor.reclaim(AGGRESSIVE)
    assert cache == {"k": 1}
    assert advisor.statistics().reclaims == 0


class Node:
    """A node for building reference cycles."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def gc_paused() -> Iterator[None]:
    """Stop automatic collection so that only reclaim() collects."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("gc_paused")
async def test_normal_reclaim_collects_young_garbage_only() -> None:
    """Normal reclaim collects generations 0-1; only aggressive reclaim reaches generation 2."""
    advisor = MemoryAdvisor(make_snapshot)
    old = Node()
    old.other = Node()
    old.other.other = old
    gc.collect()  # `old` survives into the oldest generation
    young = Node()
    young.other = Node()
    young.other.other = young
    old_ref, young_ref = weakref.ref(old), weakref.ref(young)
    del old, young
    await advisor.reclaim(NORMAL)
    assert young_ref() is None
    assert old_ref() is not None
    await advisor.reclaim(AGGRESSIVE)
    assert old_ref() is None


def test_malloc_trim_is_detected_on_glibc_linux() -> None:
    """malloc_trim is found on this glibc Linux machine."""
    assert MemoryAdvisor(make_snapshot).statistics().malloc_trim_available


@blocking_setup("reads its own RSS through psutil")
async def test_reclaim_returns_cache_memory_to_the_os() -> None:
    """Clearing a 50 MiB cache of small buffers, then trimming, lowers RSS measurably."""
    process = psutil.Process()
    advisor = MemoryAdvisor(make_snapshot)
    cache = {index: bytearray(4096) for index in range(50 * 256)}
    # Allocated after the cache, these keep the heap top in place, so that only
    # malloc_trim (not free()'s own top trimming) can give the pages back.
    pins = [bytearray(64) for _ in range(1000)]
    advisor.register_cache(cache)
    full = process.memory_info().rss
    await advisor.reclaim(AGGRESSIVE)
    after = process.memory_info().rss
    assert cache == {}
    assert len(pins) == 1000
    assert after <= full - 25 * MIB, f"RSS only fell by {(full - after) / MIB:.1f} MiB"


async def test_reclaim_runs_as_dispatcher_participant() -> None:
    """reclaim registers with the dispatcher as an async callable and reports ok."""
    advisor = MemoryAdvisor(make_snapshot)
    cache = {"k": 1}
    advisor.register_cache(cache)
    dispatcher = CleanupDispatcher(handler_timeout=30, measure_used_bytes=lambda: 0)
    dispatcher.register(advisor.reclaim, name="memory")
    report = await dispatcher.run(NORMAL)
    assert report.ok
    assert cache == {}
