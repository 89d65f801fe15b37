"""
Peak resident memory of a process tree, sampled from a background thread.

Covers: :class:`PeakRss` (sum of RSS of a process and all its descendants, the max
over the sampling window). Does not cover: anything the supervisor measures itself.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType

__all__ = ("PeakRss",)


class PeakRss:
    """
    ``with PeakRss(pid) as peak: ...`` then ``peak.bytes``: the largest tree RSS seen.

    Args:
        pid: The root process (``None`` = this one).
        interval: Seconds between samples.
        children: Returns the pids to count besides the root (default: every
            descendant); lets a run count one pool's workers and not another's.
    """

    def __init__(
        self,
        pid: int | None = None,
        interval: float = 0.02,
        children: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        self._proc = psutil.Process(pid)
        self._children = children
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-peak-rss", daemon=True)
        self.bytes = 0

    def sample(self) -> int:
        """Return the tree's RSS now (processes that vanish meanwhile are skipped)."""
        if self._children is None:
            procs = [self._proc, *self._proc.children(recursive=True)]
        else:
            procs = [self._proc]
            for pid in self._children():
                try:
                    procs.append(psutil.Process(pid))
                except psutil.Error:
                    continue
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        while True:
            try:
                self.bytes = max(self.bytes, self.sample())
            except psutil.Error:
                return
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
