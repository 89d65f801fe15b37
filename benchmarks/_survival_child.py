"""
The service that the survival suite runs inside a real memory cgroup.

Usage: ``python -m benchmarks._survival_child '<json config>'``. The process waits
for one line on stdin (so that the parent can move it into the cgroup before it
allocates or imports anything), then runs one scenario and prints JSON lines; the
last one has ``"done": true``. A process the OOM killer ends prints no such line.

Scenarios (``config["scenario"]``):

``ramp``
    A cache grows at ``rate_mib_s`` in steps of ``step_mib`` until ``total_mib`` were
    allocated. Supervised with ``interval`` (and kernel notifications on or off where
    the installed version has them): normal cleanup drops the oldest half of the
    cache, aggressive cleanup drops it all. Reports when usage first crossed the
    warning threshold and when the first cleanup handler started.
``lane``
    Bursts of CPU calls whose workers keep a little of what they allocate (they grow),
    beside a service cache that grows per burst, on the ``adaptive`` supervised lane
    or a static ``ProcessPoolExecutor`` of ``static_workers`` without a supervisor.
    With ``series`` a time series of memory, level, workers and completed calls is
    printed every 50 ms.

Related: :mod:`benchmarks.survival` (creates the cgroups, reads the lines).
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
PAGE = 4096
SERIES_PERIOD = 0.05


def emit(**record: object) -> None:
    """Write one JSON line to stdout at once."""
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def touched(size: int) -> bytearray:
    """Return a bytearray of *size* bytes with every page written, so it is charged."""
    block = bytearray(size)
    memoryview(block)[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return block


class Cache:
    """A cache of touched blocks with a cleanup participant that frees them."""

    def __init__(self) -> None:
        self.entries: deque[bytearray] = deque()
        self.first_handler_at: float | None = None
        self.cleanups = 0

    async def cleanup(self, request: Any) -> None:
        """
        Drop the oldest half (normal) or everything (aggressive).

        Cancellation:
            Synchronous inside; nothing to cancel.
        """
        if self.first_handler_at is None:
            self.first_handler_at = time.perf_counter()
        self.cleanups += 1
        drop = len(self.entries) if request.aggressive else (len(self.entries) + 1) // 2
        for _ in range(drop):
            self.entries.popleft()


def usage_reader(cgroup_dir: str) -> Any:
    """Return a function reading the cgroup's charged memory (v1 or v2)."""
    path = Path(cgroup_dir)
    name = (
        "memory.usage_in_bytes" if (path / "memory.usage_in_bytes").exists() else "memory.current"
    )
    target = path / name
    return lambda: int(target.read_text())


def settings_for(config: dict[str, Any]) -> Any:
    """Build the supervisor settings of a scenario (notifications where supported)."""
    from resource_supervisor import SupervisorSettings

    values: dict[str, Any] = {
        "monitoring_interval": config["interval"],
        "warning_threshold_memory": config["warning"],
        "aggressive_threshold_memory": config["aggressive"],
        "hysteresis": 5,
        "cleanup_cooldown": 0.2,
        "concurrency": dict(config.get("concurrency", {})),
    }
    notifications = config.get("notifications")
    if notifications is not None:
        values["memory_notifications"] = notifications
    return SupervisorSettings.model_validate(values)


async def ramp(config: dict[str, Any]) -> None:
    """The ``ramp`` scenario."""
    import anyio

    from resource_supervisor import Supervisor

    usage = usage_reader(config["cgroup"])
    limit = config["limit_bytes"]
    warning_bytes = limit * config["warning"] / 100
    step = config["step_mib"] * MiB
    cache = Cache()
    crossed_at: float | None = None
    async with Supervisor(settings_for(config)) as sup:
        sup.register_cleanup(cache, name="cache")
        emit(started=True, snapshot_keys=sorted(sup.metrics))
        allocated = 0
        begin = time.perf_counter()
        while allocated < config["total_mib"] * MiB:
            step_started = time.perf_counter()
            cache.entries.append(touched(step))
            allocated += step
            if crossed_at is None and usage() >= warning_bytes:
                crossed_at = step_started
            # Pace by the clock, not by sleeps alone, so the rate holds on a busy machine.
            due = begin + allocated / MiB / config["rate_mib_s"]
            await anyio.sleep(max(0.0, due - time.perf_counter()))
        notified = sup.metrics.get("memory_notifications_total")
    emit(
        done=True,
        crossed_at=crossed_at,
        first_handler_at=cache.first_handler_at,
        cleanups=cache.cleanups,
        notifications=notified,
    )


def main(argv: list[str]) -> int:
    """Wait for the go line, run the scenario, return the exit status."""
    config = json.loads(argv[1])
    sys.stdin.readline()
    import anyio

    if config["scenario"] == "ramp":
        anyio.run(ramp, config)
    else:
        from benchmarks._survival_lane import lane

        anyio.run(lane, config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
