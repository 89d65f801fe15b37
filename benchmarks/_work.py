"""
Picklable work functions that benchmark workers import by name.

Covers: trivial, CPU-bound, allocating and crashing functions used by the process,
mapping, adaptive and Dask suites. Does not cover: timing (:mod:`benchmarks._harness`).
"""

from __future__ import annotations

import os
import time

__all__ = (
    "alloc_and_spin",
    "crash",
    "grow_and_spin",
    "noop",
    "payload_len",
    "record_and_crash",
    "spin",
    "square",
)


def noop() -> None:
    """Do nothing: the per-call overhead of a lane."""


def square(x: int) -> int:
    """Return ``x * x``: the tiny map item."""
    return x * x


def spin(seconds: float) -> float:
    """Keep one CPU busy for *seconds* and return them."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def alloc_and_spin(mib: int, seconds: float) -> int:
    """Hold *mib* MiB (touched) while spinning for *seconds*; return the bytes held."""
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    spin(seconds)
    return len(block)


def payload_len(payload: bytes) -> int:
    """Return the payload's length (the payload's transfer is what is measured)."""
    return len(payload)


def crash() -> None:
    """End the worker process at once, as a segfault or OOM kill would."""
    os._exit(13)


def record_and_crash(path: str) -> None:
    """Append one line to *path* (counting executions), then end the worker process."""
    with open(path, "a") as f:
        f.write("ran\n")
    os._exit(13)


_KEPT: list[bytearray] = []
"""What :func:`grow_and_spin` keeps between calls: the worker grows, as a leaky one would."""


def grow_and_spin(mib: int, seconds: float, keep_mib: int) -> int:
    """
    Hold *mib* MiB (touched) while spinning for *seconds*, and keep *keep_mib* MiB of it
    for good; return the bytes this worker keeps in total.
    """
    alloc_and_spin(mib, seconds)
    if keep_mib:
        block = bytearray(keep_mib * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        _KEPT.append(block)
    return sum(len(block) for block in _KEPT)
