"""
Worker functions for the fault-injection, lifecycle and soak runs (module-level, so
worker processes can unpickle them).

Each "recorded" function appends this process's pid to ``<directory>/<item>.runs``
before it works and to ``<directory>/<item>.done`` after, with one ``O_APPEND``
write each, so a test can count how often an item ran (exactly once, never twice)
and see which pid is running which item, even across worker crashes.

Related: ``tests/test_faults.py``, ``tests/test_lifecycle.py``, ``benchmarks/soak.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = (
    "EXIT_CODE",
    "executions",
    "exit_on",
    "finished",
    "raise_on",
    "record",
    "running",
    "sleepy_square",
    "square",
)

EXIT_CODE = 3
"""Exit status of a worker that :func:`exit_on` ends with ``os._exit``."""


def square(item: int) -> int:
    """Return ``item * item``."""
    return item * item


def _append(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def record(directory: str, item: int, suffix: str) -> None:
    """Append this pid to ``<directory>/<item>.<suffix>``."""
    _append(Path(directory) / f"{item}.{suffix}", f"{os.getpid()}\n")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def executions(directory: str, item: int) -> int:
    """How many times *item* started running."""
    return len(_lines(Path(directory) / f"{item}.runs"))


def finished(directory: str, item: int) -> int:
    """How many times *item* ran to its end."""
    return len(_lines(Path(directory) / f"{item}.done"))


def running(directory: str) -> dict[int, int]:
    """Items started more often than finished, mapped to the pid that last started each."""
    result: dict[int, int] = {}
    for path in Path(directory).glob("*.runs"):
        item = int(path.stem)
        runs = _lines(path)
        if len(runs) > finished(directory, item):
            result[item] = int(runs[-1])
    return result


def sleepy_square(directory: str, delay: float, item: int) -> int:
    """Record the start, sleep *delay* seconds, record the end, return ``item * item``."""
    record(directory, item, "runs")
    time.sleep(delay)
    record(directory, item, "done")
    return item * item


def exit_on(directory: str, exit_items: frozenset[int], item: int) -> int:
    """Record the start; end the worker with ``os._exit(EXIT_CODE)`` for *exit_items*."""
    record(directory, item, "runs")
    if item in exit_items:
        os._exit(EXIT_CODE)
    record(directory, item, "done")
    return item * item


def raise_on(raise_items: frozenset[int], item: int) -> int:
    """Raise ``ValueError`` for *raise_items*, else return ``item * item``."""
    if item in raise_items:
        raise ValueError(f"item {item} refused")
    return item * item
