"""
A supervised service whose participants raise everything they can, run as a script.

``python -m tests._rogue_service`` enters a supervisor sampling every 20 ms at
CRITICAL (scripted), with sync and async metrics providers raising
``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` and ``CancelledError``, a
cleanup handler and a memory cache raising ``KeyboardInterrupt``, and a session
whose ``on_close`` raises ``SystemExit`` when it expires. It prints one line of
counters every 50 ms until it is stopped (a real SIGINT stops it).
"""

from __future__ import annotations

import asyncio
import sys

import anyio

from resource_supervisor import CleanupRequest, Supervisor
from resource_supervisor._config import build_settings
from resource_supervisor.testing import ScriptedSource

RAISED = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def _sync_provider(exc_type: type[BaseException]) -> object:
    def provider() -> dict[str, float]:
        raise exc_type("from a sync provider")

    return provider


def _async_provider(exc_type: type[BaseException]) -> object:
    async def provider() -> dict[str, float]:
        await anyio.lowlevel.checkpoint()
        raise exc_type("from an async provider")

    return provider


class _InterruptingCache:
    def clear(self) -> None:
        raise KeyboardInterrupt


async def _interrupting_handler(request: CleanupRequest) -> None:
    raise KeyboardInterrupt


async def _exiting_on_close(session_id: str) -> None:
    raise SystemExit(3)


async def main() -> None:
    """Run until cancelled, printing the counters of isolated failures."""
    source = ScriptedSource()
    source.set(memory_percent=95.0)  # CRITICAL: automatic cleanup on every sample
    settings = build_settings(
        monitoring_interval=0.02,
        cleanup_cooldown=0.0,
        session_ttl=0.05,
        session_ttl_aggressive=0.05,
        provider_timeout=2.0,
        concurrency={"default_cpu_workers": 1, "default_io_workers": 2},
    )
    async with Supervisor(settings, source=source) as sup:
        for exc_type in RAISED:
            name = exc_type.__name__.lower()
            sup.register_metrics_provider(f"sync_{name}", _sync_provider(exc_type))  # type: ignore[arg-type]
            sup.register_metrics_provider(f"async_{name}", _async_provider(exc_type))  # type: ignore[arg-type]
        sup.register_cleanup(_interrupting_handler, name="interrupting")
        sup.memory.register_cache(_InterruptingCache(), name="interrupting_cache")
        sup.sessions.open("doomed", on_close=_exiting_on_close)
        while True:
            await anyio.sleep(0.05)
            snap = sup.metrics
            counters = (
                int(snap["provider_failures_total"]),
                int(snap["cleanup_handler_failures_total"]),
                int(snap["sessions_close_failures_total"]),
                sup.memory.statistics().cache_failures,
            )
            sys.stdout.write(" ".join(["alive", *map(str, counters)]) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    anyio.run(main)
