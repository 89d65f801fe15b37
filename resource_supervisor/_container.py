"""
Container-wide supervision: what this process does with its peers' snapshots.

Covers: :class:`Container`, the supervisor's part of multi-process mode. It decides
whether the mode is on (``multiprocess.enabled``, with ``auto`` =
:func:`served_by_multiprocess_server`), joins the shared :class:`PeerDirectory`,
publishes each snapshot there, and reads the peers once per sample to give the
container's figures (``container_processes``, ``container_pressure_level``,
``container_largest_pid``, ``container_is_largest``) and the cleanup rule: at WARNING
only the process holding the most memory cleans up; at CRITICAL every process does
(and each one sheds and shrinks its lane, as it reads the same cgroup).

Does not cover: the directory's files and liveness (:mod:`._peers`), exporting the
peers' series (:mod:`.integrations.prometheus`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ._peers import Peer, PeerDirectory, PeerDirectoryError, default_directory, largest
from ._snapshot import PressureLevel
from .broker._local._cpu_budget import CpuBudget

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._config import MultiprocessSettings
    from ._snapshot import MetricValue

__all__ = ("Container", "container_health", "served_by_multiprocess_server")

logger = logging.getLogger("resource_supervisor")


def served_by_multiprocess_server() -> bool:
    """
    Whether this process is a worker of a multi-process server: its parent is a
    gunicorn master or a ``uvicorn --workers`` supervisor (read from the parent's
    command line).
    """
    try:
        words = psutil.Process().parent().cmdline()  # type: ignore[union-attr]
    except (psutil.Error, AttributeError):
        return False
    line = " ".join(words)
    if "gunicorn" in line:
        return True
    return "uvicorn" in line and "--workers" in line


class Container:
    """
    This process's view of the container's supervised processes.

    Args:
        settings: The ``multiprocess`` settings.
    """

    def __init__(self, settings: MultiprocessSettings) -> None:
        self._settings = settings
        self._directory: PeerDirectory | None = None
        self._peers: list[Peer] = []
        self.cpu_budget: CpuBudget | None = None
        """The container's CPU tokens for the process lane, once joined."""

    @property
    def enabled(self) -> bool:
        """Whether this process is a member of a shared directory."""
        return self._directory is not None and self._directory.is_open

    def open(self, *, cpu_tokens: int = 1) -> None:
        """
        Join the shared directory when the mode is on (an unusable one is logged),
        with a CPU budget of *cpu_tokens* lane workers for the whole container.
        """
        s = self._settings
        on = served_by_multiprocess_server() if s.enabled == "auto" else s.enabled
        if not on:
            return
        path = Path(s.directory) if s.directory is not None else default_directory()
        directory = PeerDirectory(path, worker=s.worker_index)
        try:
            directory.open()
        except (PeerDirectoryError, OSError) as exc:
            logger.warning("multi-process mode off: shared directory %s unusable (%s)", path, exc)
            return
        self._directory = directory
        self.cpu_budget = CpuBudget(path, cpu_tokens)

    def close(self) -> None:
        """Leave the shared directory, giving back every CPU token. Idempotent."""
        if self.cpu_budget is not None:
            self.cpu_budget.close()
            self.cpu_budget = None
        if self._directory is not None:
            self._directory.close()
            self._directory = None

    def peers(self) -> list[Peer]:
        """Every live supervised process of the container (fresh read); [] when off."""
        if self._directory is None:
            return []
        return self._directory.peers()

    def observe(self, data: Mapping[str, MetricValue]) -> dict[str, MetricValue]:
        """
        Read the peers and return the container figures for this process's snapshot.

        The peers' last snapshots are combined with this process's new *data*.
        """
        if self._directory is None:
            return {}
        me = Peer(self._directory.pid, self._directory.worker, data, own=True)
        others = [peer for peer in self.peers() if not peer.own]
        self._peers = [me, *others]
        top = largest(self._peers)
        levels = [_level(peer.snapshot) for peer in self._peers]
        budget = self.cpu_budget
        return {
            "container_cpu_tokens": budget.tokens if budget is not None else 0,
            "process_cpu_tokens_held": budget.held if budget is not None else 0,
            "container_processes": len(self._peers),
            "container_pressure_level": max(levels),
            "container_largest_pid": top.pid if top is not None else 0,
            "container_is_largest": int(top is not None and top.own),
        }

    def publish(self, snapshot: Mapping[str, MetricValue]) -> None:
        """Publish this process's snapshot for the peers (errors are logged once)."""
        if self._directory is None:
            return
        try:
            self._directory.publish(snapshot)
        except OSError as exc:
            logger.warning("cannot publish to %s (%s)", self._directory.directory, exc)

    def cleans(self, *, aggressive: bool) -> bool:
        """
        Whether this process runs a cleanup the level calls for: always at CRITICAL,
        at WARNING only in the process holding the most memory (or when alone).
        """
        if aggressive or self._directory is None:
            return True
        top = largest(self._peers)
        return top is None or top.own


def _level(snapshot: Mapping[str, MetricValue]) -> int:
    value = snapshot.get("pressure_level", 0)
    if isinstance(value, int | float) and math.isfinite(value):
        return min(int(PressureLevel.CRITICAL), max(0, int(value)))
    return 0


def container_health(peers: Sequence[Peer]) -> dict[str, object]:
    """
    The container part of ``/health/resources`` in multi-process mode. Pure.

    Returns:
        ``level`` (the highest level any live process sees), ``largest_pid`` and
        ``processes``: one entry per live supervised process with its pid, worker
        index, level, and memory (the process and its lane workers).
    """
    top = largest(peers)
    levels = [_level(peer.snapshot) for peer in peers]
    return {
        "level": PressureLevel(max(levels, default=0)).name,
        "largest_pid": top.pid if top is not None else None,
        "processes": [
            {
                "pid": peer.pid,
                "worker": peer.worker,
                "level": PressureLevel(level).name,
                "memory_bytes": peer.rss_bytes,
            }
            for peer, level in zip(peers, levels, strict=True)
        ],
    }
