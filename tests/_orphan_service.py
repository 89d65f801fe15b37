"""
The service that ``tests/broker/local/test_process_orphans.py`` SIGKILLs while its workers are busy.

Usage: ``python -m tests._orphan_service START_METHOD``. It starts a process lane of
two workers, keeps both busy (one spinning in Python, one sleeping), queues a call
with a big argument behind them (so its spill file exists), prints one JSON line
``{"ready": true, "workers": [...]}`` and then waits to be killed.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def main(start_method: str) -> None:
    """Start the busy lane, report, wait forever."""
    from resource_supervisor._config import ConcurrencySettings
    from resource_supervisor.broker._local._lane import ProcessLane
    from tests import _workers

    settings = ConcurrencySettings(idle_timeout=300.0, start_method=start_method)  # type: ignore[arg-type]
    lane = ProcessLane(settings, max_workers=2)
    busy = [
        asyncio.ensure_future(lane.run(_workers.spin, (120.0,), timeout=None)),
        asyncio.ensure_future(lane.run(_workers.sleep, (120.0,), timeout=None)),
    ]
    while lane.statistics().workers_busy < 2:  # noqa: ASYNC110 - the state lives in workers
        await asyncio.sleep(0.01)
    big = asyncio.ensure_future(lane.run(_workers.checksum, (b"x" * (4 << 20),), timeout=None))
    while lane.statistics().queue_depth < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    sys.stdout.write(json.dumps({"ready": True, "workers": lane.statistics().worker_pids}) + "\n")
    sys.stdout.flush()
    await asyncio.gather(*busy, big)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
