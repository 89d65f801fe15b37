"""
Tests of governing anyio's default thread limiter (resource_supervisor._thread_limiter),
with a real FastAPI app whose ``def`` endpoint runs on that limiter.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.to_thread
import httpx
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor import PressureLevel, Supervisor
from resource_supervisor._config import build_settings
from resource_supervisor._thread_limiter import governed_tokens
from resource_supervisor.integrations.fastapi import supervised_lifespan
from resource_supervisor.testing import ScriptedSource

GUARD = 30.0  # seconds; a hang guard only


@given(base=st.integers(1, 10_000), level=st.sampled_from(PressureLevel))
def test_governed_size_is_between_one_and_the_base_and_shrinks_with_pressure(
    base: int, level: PressureLevel
) -> None:
    """The size is never below 1 nor above the base, and never grows with the level."""
    size = governed_tokens(base, level)
    assert 1 <= size <= base
    assert size <= governed_tokens(base, PressureLevel(max(0, int(level) - 1)))
    assert governed_tokens(base, PressureLevel.NORMAL) == base


async def test_fastapi_def_endpoint_runs_under_the_governed_limiter() -> None:
    """A def endpoint runs on anyio's default limiter: its size comes from settings,
    shrinks at WARNING and CRITICAL and comes back at NORMAL, the snapshot shows busy and
    total, and the original size returns when the supervisor exits."""
    source = ScriptedSource()
    settings = build_settings(
        monitoring_enabled=False,
        concurrency={
            "default_cpu_workers": 1,
            "default_io_workers": 2,
            "default_thread_limiter_tokens": 8,
            "govern_default_thread_limiter": True,
        },
    )
    app = FastAPI(
        lifespan=supervised_lifespan(
            settings, supervisor_factory=lambda s: Supervisor(s, source=source)
        )
    )
    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    @app.get("/blocking")
    def blocking() -> dict[str, str]:  # a def endpoint: Starlette's run_in_threadpool
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(GUARD)
        with lock:
            running -= 1
        return {"thread": threading.current_thread().name}

    original = anyio.to_thread.current_default_thread_limiter().total_tokens
    async with app.router.lifespan_context(app):
        sup: Supervisor = app.state.supervisor
        limiter = anyio.to_thread.current_default_thread_limiter()
        assert limiter.total_tokens == 8
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            source.set(memory_percent=95.0)
            snap = await sup.update_metrics()
            assert snap.pressure_level is PressureLevel.CRITICAL
            assert limiter.total_tokens == 2
            with anyio.fail_after(GUARD):
                requests = [asyncio.ensure_future(client.get("/blocking")) for _ in range(6)]
                # the requests' state lives in worker threads: poll
                while limiter.statistics().tasks_waiting < 4:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                assert limiter.borrowed_tokens == 2
                snap = await sup.update_metrics()
                assert snap["default_thread_limiter_busy"] == 2
                assert snap["default_thread_limiter_total"] == 2
                source.set(memory_percent=78.0)  # below CRITICAL's band: WARNING
                await sup.update_metrics()
                assert sup.level is PressureLevel.WARNING
                assert limiter.total_tokens == 4
                source.set(memory_percent=5.0)
                await sup.update_metrics()
                assert limiter.total_tokens == 8
                release.set()
                responses = await asyncio.gather(*requests)
        assert [r.status_code for r in responses] == [200] * 6
        assert peak <= 8
        assert all(r.json()["thread"] != "resource-supervisor thread lane" for r in responses)
    assert anyio.to_thread.current_default_thread_limiter().total_tokens == original


async def test_ungoverned_limiter_keeps_its_size_and_is_still_shown() -> None:
    """By default the limiter is left alone (40 tokens) under pressure, and the
    snapshot still shows its busy and total."""
    source = ScriptedSource()
    settings = build_settings(
        monitoring_enabled=False,
        concurrency={"default_cpu_workers": 1, "default_io_workers": 2},
    )
    limiter = anyio.to_thread.current_default_thread_limiter()
    before = limiter.total_tokens
    async with Supervisor(settings, source=source) as sup:
        source.set(memory_percent=95.0)
        snap = await sup.update_metrics()
        assert snap.pressure_level is PressureLevel.CRITICAL
        assert limiter.total_tokens == before
        assert snap["default_thread_limiter_total"] == before
        assert snap["default_thread_limiter_busy"] == 0
