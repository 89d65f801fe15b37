"""
A service whose thread calls, sync provider and sync cleanup handler never return,
run as a script by tests/test_lifecycle.py: the interpreter must still exit.
"""

from __future__ import annotations

import functools
import sys
import threading

import anyio

from resource_supervisor import CallTimeoutError, CleanupRequest, Supervisor
from resource_supervisor._config import build_settings

forever = threading.Event()


def say(*parts: object) -> None:
    """One line on stdout, flushed (the test reads it)."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def hang() -> None:
    forever.wait()


def hung_provider() -> dict[str, float]:
    forever.wait()
    return {}


def hung_handler(request: CleanupRequest) -> None:
    forever.wait()


async def main() -> None:
    """Leave thread calls, a provider and a handler hung, then exit the supervisor."""
    settings = build_settings(
        monitoring_interval=0.05,
        shutdown_timeout=0.5,
        provider_timeout=0.1,
        concurrency={"default_cpu_workers": 1, "default_io_workers": 3},
    )
    async with Supervisor(settings) as sup:
        sup.register_metrics_provider("stuck", hung_provider)
        sup.register_cleanup(hung_handler, name="stuck", timeout=0.1)
        try:
            await sup.executors.run_in_thread(hang, timeout=0.2)
        except CallTimeoutError as exc:
            say("timeout", exc)
        snap = await sup.update_metrics()
        say("abandoned", snap["thread_lane_abandoned"], snap["thread_lane_abandoned_total"])
        report = await sup.request_cleanup()
        say("cleanup", *sorted(f"{o.name}={o.status}" for o in report.outcomes))
        async with anyio.create_task_group() as tg:
            call = functools.partial(sup.executors.run_in_thread, hang, abandon_on_cancel=True)
            tg.start_soon(call)
            await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    say("exited")


if __name__ == "__main__":
    anyio.run(main)
