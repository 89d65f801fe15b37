"""
Worker-side functions for the Dask lane tests: importable by spawned Dask workers.

Executions are counted with files: each call that starts writes one uniquely named
file ``<name>.<uuid>`` into the directory it is given, so a test can count how often
a call ran, even when its worker process died.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def square(x: int) -> int:
    """Return ``x * x``."""
    return x * x


def square_or_fail(x: int) -> int:
    """Return ``x * x``; raise KeyError for 13."""
    if x == 13:
        raise KeyError(x)
    return x * x


def raise_key_error(key: str) -> None:
    """Raise ``KeyError(key)``."""
    raise KeyError(key)


def record(directory: str, name: str) -> None:
    """Write one ``<name>.<uuid>`` file into *directory*."""
    (Path(directory) / f"{name}.{uuid.uuid4().hex}").touch()


def count(directory: Path, name: str) -> int:
    """How many times :func:`record` ran for *name* (caller side)."""
    return len(list(directory.glob(f"{name}.*")))


def record_and_crash(directory: str, name: str) -> None:
    """Record the execution, then kill this worker process."""
    record(directory, name)
    os._exit(3)


def record_and_sleep(directory: str, name: str, seconds: float) -> str:
    """Record the execution, sleep, and return *name*."""
    record(directory, name)
    time.sleep(seconds)
    return name


def block_until(directory: str, name: str, release: str, limit: float = 20.0) -> str:
    """
    Record the start, wait until the file *release* exists (hang guard *limit*), then
    record ``<name>-done`` and return *name*.
    """
    record(directory, name)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    record(directory, f"{name}-done")
    return name


def grow_memory(step_bytes: int, steps: int, pause: float) -> int:
    """Allocate and touch *step_bytes* per step, *steps* times; return the total held."""
    held = [b"x" * step_bytes]
    for _ in range(steps - 1):
        time.sleep(pause)
        held.append(b"x" * step_bytes)
    return sum(len(block) for block in held)


def stream_intervals(dask_scheduler: Any = None) -> dict[str, float]:
    """Run on the scheduler: the batch interval of its stream to each worker."""
    return {addr: float(stream.interval) for addr, stream in dask_scheduler.stream_comms.items()}


def sleep_and_return(seconds: float) -> float:
    """Sleep *seconds* on the worker and return them."""
    time.sleep(seconds)
    return seconds


def tasks_on_scheduler(dask_scheduler: Any = None) -> int:
    """Run on the scheduler: tasks it has queued or sent to workers and not finished."""
    active = {"queued", "no-worker", "waiting", "processing"}
    return sum(1 for task in dask_scheduler.tasks.values() if task.state in active)


def block_then_exit(directory: str, name: str, release: str, limit: float = 20.0) -> None:
    """Record the start, wait for the file *release* (hang guard *limit*), then die."""
    record(directory, name)
    deadline = time.monotonic() + limit
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(3)
