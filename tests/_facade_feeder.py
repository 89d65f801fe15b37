"""
A script on the sync facade whose non-daemon background thread keeps feeding
map_tasks_in_process_pool, with a thread call that never returns and one queued
behind it; run by tests/test_lifecycle.py: it must exit by itself.
"""

from __future__ import annotations

import sys
import threading
import time

from resource_supervisor import SupervisorClosedError
from resource_supervisor.compat import ResourceManager


def say(*parts: object) -> None:
    """One line on stdout, flushed (the test reads it)."""
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


def square(x: int) -> int:
    return x * x


def feeder(rm: ResourceManager) -> None:
    """Map for ever, until the facade shuts down."""
    try:
        while True:
            sum(rm.concurrency_manager.map_tasks_in_process_pool(square, range(200)))
    except SupervisorClosedError:
        say("feeder closed")


if __name__ == "__main__":
    rm = ResourceManager()
    gate = threading.Event()
    busy = rm.concurrency_manager.run_in_thread_pool(gate.wait)  # holds the only lane thread
    queued = rm.concurrency_manager.run_in_thread_pool(time.sleep, 0)
    queued.add_done_callback(lambda f: say("queued", type(f.exception()).__name__))
    threading.Thread(target=feeder, args=(rm,), name="feeder").start()  # not a daemon
    time.sleep(1.0)
    say("main done")
