"""
Type-only checks of the supervisor's public surface (mypy, never run).

Snapshot values are typed by key: labels are ``str``, every other metric a number,
so comparisons type-check without casts. Calls that must be rejected carry
``# type: ignore[code]``; strict mode's ``warn_unused_ignores`` proves the rejection.
"""

from __future__ import annotations

from typing import assert_type

from resource_supervisor import (
    CleanupReport,
    CleanupRequest,
    MetricsSnapshot,
    PressureLevel,
    Supervisor,
)


async def handler(request: CleanupRequest) -> None:
    assert_type(request.aggressive, bool)


async def snapshot_values(sup: Supervisor) -> None:
    snap = sup.metrics
    assert_type(snap, MetricsSnapshot)
    assert_type(snap["memory_percent"], float)
    assert_type(snap["memory_limit_source"], str)
    assert_type(snap.get("rag_docs"), float | None)
    assert_type(snap.get("rag_docs", 0), float)
    assert_type(snap.get("memory_limit_source", "host"), str)
    assert_type(snap.pressure_level, PressureLevel)
    assert_type(snap.memory_available_bytes, int)
    if snap["system_memory_percent"] > 80:
        await sup.request_cleanup(aggressive=True)
    snap["memory_percent"] = 1.0  # type: ignore[operator]


async def supervisor_calls(sup: Supervisor) -> None:
    assert_type(await sup.update_metrics(), MetricsSnapshot)
    assert_type(await sup.request_cleanup(aggressive=False, reason="x"), CleanupReport)
    sup.register_cleanup(handler, name="h")
    sup.register_metrics_provider("rag", lambda: {"docs": 1})
    await sup.request_cleanup(True)  # type: ignore[call-arg]
    async with sup.subscribe(buffer=4) as stream:
        async for snap in stream:
            assert_type(snap, MetricsSnapshot)
