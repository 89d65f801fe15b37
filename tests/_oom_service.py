"""
The service that ``tests/broker/local/test_process_oom.py`` runs inside a real 300 MiB
memory cgroup.

Usage: ``python -m tests._oom_service``. It waits for one line on stdin (so the
test can move it into the cgroup first), holds 150 MiB it never frees, then runs
one process call that grows at 200 MiB/s towards 400 MiB under a supervisor that
samples every 0.1 s. It prints one JSON line with the call's outcome and the
lane's figures, checks that the lane still answers, and prints ``{"done": true}``.
"""

from __future__ import annotations

import json
import sys

MiB = 1024 * 1024


def _emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def main() -> None:
    """Hold memory, run the growing call, report."""
    from resource_supervisor import Supervisor, SupervisorSettings, WorkerCrashedError
    from tests import _workers

    held = bytearray(150 * MiB)
    memoryview(held)[::4096] = b"\x01" * len(range(0, len(held), 4096))
    settings = SupervisorSettings.model_validate(
        {
            "monitoring_interval": 0.1,
            "warning_threshold_memory": 70,
            "aggressive_threshold_memory": 85,
            "hysteresis": 5,
            "cleanup_cooldown": 0.2,
            "concurrency": {"default_cpu_workers": 1, "default_io_workers": 2},
        }
    )
    async with Supervisor(settings) as sup:
        record: dict[str, object] = {}
        try:
            grown = await sup.executors.run_in_process(_workers.grow, 200.0 * MiB, 400 * MiB)
            record.update(outcome="returned", value=grown)
        except WorkerCrashedError as exc:
            record.update(outcome="crashed", reason=exc.reason, message=str(exc))
        metrics = await sup.update_metrics()
        record.update(
            oom_kills=metrics["process_oom_kills_total"],
            memory_kills=metrics["process_memory_kills_total"],
        )
        _emit(record)
        assert await sup.executors.run_in_process(_workers.square, 7) == 49
    _emit({"done": True, "held": len(held)})


if __name__ == "__main__":
    sys.stdin.readline()
    import anyio

    anyio.run(main)
