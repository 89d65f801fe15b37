"""
The service that ``tests/test_container_limit.py`` runs inside a real memory cgroup.

Usage: ``python tests/_cgroup_child.py supervised|unsupervised STEP_BYTES TARGET_BYTES
[SETTINGS_JSON [STEP_PAUSE_SECONDS]]``.

The process first waits for one line on stdin, so that the test can move it into
the cgroup before it allocates anything (or imports the library). It then grows
an in-memory cache by ``STEP_BYTES`` per step, touching every page, until it has
allocated ``TARGET_BYTES`` in total. In ``supervised`` mode a :class:`Supervisor`
samples every 0.1 s and the cache is registered as a cleanup participant (normal
cleanup drops the oldest entry, aggressive cleanup drops everything); in
``unsupervised`` mode nothing ever frees the cache, like a service without the
library. ``SETTINGS_JSON`` replaces the supervised mode's settings (``{}`` means the
defaults). With ``STEP_PAUSE_SECONDS`` the ramp is paced: step *k* is allocated
*k* pauses after the first, however long touching the pages takes, so the rate is
``STEP_BYTES / STEP_PAUSE_SECONDS`` as long as the machine keeps up (behind schedule
it catches up at most at twice that, with at least half a pause between steps); without it each
step is followed by a fixed 40 ms pause. Every step prints one JSON line (with
``elapsed_seconds`` since the first step); the last line has ``"done": true``.

Related: ``tests/test_container_limit.py`` (creates the cgroup, reads the lines).
"""

from __future__ import annotations

import sys
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resource_supervisor import CleanupRequest, Supervisor

PAGE_BYTES = 4096
STEP_PAUSE_SECONDS = 0.04


class Cache:
    """
    A cache of bytearrays whose pages are all touched, so they are really charged.
    """

    def __init__(self) -> None:
        self.entries: deque[bytearray] = deque()
        self.cleanups = 0
        self.aggressive_cleanups = 0

    @property
    def size_bytes(self) -> int:
        """Bytes held right now."""
        return sum(len(entry) for entry in self.entries)

    def add(self, size: int) -> None:
        """Allocate *size* bytes and write one byte in every page."""
        entry = bytearray(size)
        memoryview(entry)[::PAGE_BYTES] = b"\x01" * len(range(0, size, PAGE_BYTES))
        self.entries.append(entry)

    async def cleanup(self, request: CleanupRequest) -> None:
        """
        Drop the oldest entry, or every entry when aggressive.

        Normal cleanup frees less than the ramp adds, so pressure keeps rising to
        CRITICAL, where aggressive cleanup must free enough to avoid the OOM killer.

        Cancellation:
            Synchronous inside; a cancellation is seen only after the drop.
        """
        self.cleanups += 1
        if request.aggressive:
            self.aggressive_cleanups += 1
            self.entries.clear()
            return
        if self.entries:
            self.entries.popleft()


def _emit(line: str) -> None:
    """Write one line to stdout at once: the test reads them as the child's report."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


LEVELS_SEEN: set[str] = set()
"""Every level the supervisor changed to, from its event stream (a level may last
less than a step, so the level at each step line can miss it)."""


def _line(
    step: int, allocated: int, cache: Cache, sup: Supervisor | None, elapsed: float = 0.0
) -> str:
    import json

    record: dict[str, object] = {
        "step": step,
        "elapsed_seconds": round(elapsed, 4),
        "allocated_bytes": allocated,
        "cache_bytes": cache.size_bytes,
        "cleanups": cache.cleanups,
        "aggressive_cleanups": cache.aggressive_cleanups,
    }
    if sup is not None:
        snap = sup.metrics
        record.update(
            level=sup.level.name,
            memory_percent=snap["memory_percent"],
            memory_used_bytes=snap["memory_used_bytes"],
            memory_limit_bytes=snap["memory_limit_bytes"],
            memory_limit_source=snap["memory_limit_source"],
            notified_samples=snap.get("memory_notified_samples_total", 0),
            levels_seen=sorted(LEVELS_SEEN),
        )
    return json.dumps(record)


async def ramp(
    mode: str,
    step_bytes: int,
    target_bytes: int,
    settings_json: str | None = None,
    pause: float | None = None,
) -> None:
    """Grow the cache to *target_bytes* allocated in total, printing a line per step."""
    import anyio

    cache = Cache()
    allocated = 0
    step = 0

    async def grow(sup: Supervisor | None) -> None:
        nonlocal allocated, step
        started = anyio.current_time()
        while allocated < target_bytes:
            cache.add(step_bytes)
            allocated += step_bytes
            step += 1
            _emit(_line(step, allocated, cache, sup, anyio.current_time() - started))
            if pause is None:
                await anyio.sleep(STEP_PAUSE_SECONDS)
            else:
                # Behind schedule, catch up at most at twice the pace: never two
                # steps within one loop iteration, which no service does.
                now = anyio.current_time()
                await anyio.sleep_until(max(started + step * pause, now + pause / 2))

    if mode == "unsupervised":
        await grow(None)
    else:
        import json

        from resource_supervisor import Supervisor, SupervisorSettings

        settings = SupervisorSettings.model_validate(
            json.loads(settings_json)
            if settings_json is not None
            else {
                "monitoring_interval": 0.1,
                "warning_threshold_memory": 60,
                "aggressive_threshold_memory": 75,
                "hysteresis": 5,
                "cleanup_cooldown": 0.2,
                "concurrency": {"default_cpu_workers": 1, "default_io_workers": 2},
            }
        )
        from resource_supervisor import LevelChanged

        async def watch(sup: Supervisor) -> None:
            async with sup.subscribe_events() as events:
                async for event in events:
                    if isinstance(event, LevelChanged):
                        LEVELS_SEEN.add(event.level.name)

        async with Supervisor(settings) as sup, anyio.create_task_group() as tg:
            tg.start_soon(watch, sup)
            sup.register_cleanup(cache, name="cache")
            _emit(_line(0, 0, cache, sup))
            await grow(sup)
            await sup.update_metrics()
            await anyio.sleep(0.05)  # the watcher takes the last events
            _emit(_line(step, allocated, cache, sup))
            tg.cancel_scope.cancel()
    _emit('{"done": true}')


def main(argv: list[str]) -> int:
    """Wait for the go line, then ramp; return the exit status."""
    mode, step_bytes, target_bytes = argv[1], int(argv[2]), int(argv[3])
    settings_json = argv[4] if len(argv) > 4 else None
    pause = float(argv[5]) if len(argv) > 5 else None
    if mode not in {"supervised", "unsupervised"}:
        raise SystemExit(f"unknown mode {mode!r}")
    # The test moves this process into the cgroup, then says go: nothing before
    # this line may allocate much, so that the service is charged to the cgroup.
    sys.stdin.readline()
    import anyio

    anyio.run(ramp, mode, step_bytes, target_bytes, settings_json, pause)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
