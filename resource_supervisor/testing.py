"""
Public helpers for testing code that uses a supervisor.

:class:`ManualClock` is a monotonic clock you advance by hand (pass it as
``Supervisor(clock=...)`` or to a :class:`SessionRegistry`). :class:`ScriptedSource`
wraps the real sampler and overrides chosen metrics, so a test can drive pressure
levels, cleanup and batch sizing deterministically while every other metric is
still read from the machine. :func:`memory_cgroup` runs processes inside a real
memory limit (a child cgroup of this process's own), so a test can watch the
kernel's OOM killer spare, or take, a service.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ._cgroup_sandbox import CgroupUnavailableError, MemoryCgroup, memory_cgroup
from ._metric_source import WrappingSource
from ._sampler import Sampler

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._snapshot import MetricValue
    from ._supervisor import MetricSource

__all__ = (
    "CgroupUnavailableError",
    "ManualClock",
    "MemoryCgroup",
    "ScriptedSource",
    "memory_cgroup",
)


class ManualClock:
    """
    A monotonic clock that moves only when told.

    Args:
        start: The initial reading, in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def __call__(self) -> float:
        """Return the current reading."""
        return self._now

    def advance(self, seconds: float) -> None:
        """
        Move the clock forward.

        Args:
            seconds: How far; must not be negative.

        Raises:
            ValueError: If *seconds* is negative.
        """
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back (seconds={seconds!r})")
        self._now += seconds


class ScriptedSource(WrappingSource):
    """
    The real sampler with some metrics overridden by a script.

    Each sample reads the machine, then applies the persistent overrides set with
    :meth:`set`, then the next one-shot mapping from the script (if any). Setting
    ``memory_used_bytes`` or ``memory_limit_bytes`` recomputes ``memory_percent``
    unless that is overridden too; :meth:`read_memory` honours the overrides, so
    cleanup reports see the scripted memory.

    Args:
        script: One-shot overrides, consumed one per sample.
        base: The source to wrap (defaults to the built-in sampler).
    """

    def __init__(
        self,
        script: Iterable[Mapping[str, MetricValue]] = (),
        *,
        base: MetricSource | None = None,
    ) -> None:
        super().__init__(base if base is not None else Sampler())
        self._script: deque[Mapping[str, MetricValue]] = deque(script)
        self._fixed: dict[str, MetricValue] = {}
        self.samples = 0

    def set(self, **values: MetricValue) -> None:
        """
        Override metrics in every following sample (``memory_percent=90.0``).

        Args:
            values: Metric names and values.
        """
        self._fixed.update(values)

    def unset(self, *names: str) -> None:
        """
        Stop overriding the named metrics (all when none are named).

        Args:
            names: Metric names.
        """
        if not names:
            self._fixed.clear()
        for name in names:
            self._fixed.pop(name, None)

    def push(self, *overrides: Mapping[str, MetricValue]) -> None:
        """
        Append one-shot overrides to the script.

        Args:
            overrides: One mapping per future sample.
        """
        self._script.extend(overrides)

    async def sample(self) -> dict[str, MetricValue]:
        """
        Read the wrapped source and apply the overrides.

        Returns:
            The metrics.

        Cancellation:
            As the wrapped source's ``sample()``; a cancelled sample consumes no
            scripted step.
        """
        data = await self._base.sample()
        overrides = dict(self._fixed)
        if self._script:
            overrides.update(self._script.popleft())
        data.update(overrides)
        if "memory_percent" not in overrides and (
            "memory_used_bytes" in overrides or "memory_limit_bytes" in overrides
        ):
            limit = float(data["memory_limit_bytes"])
            data["memory_percent"] = 100.0 * float(data["memory_used_bytes"]) / limit
        self.samples += 1
        return data

    def read_memory(self) -> tuple[int, int]:
        """
        Working set and limit, with the persistent overrides applied.

        Returns:
            ``(used_bytes, limit_bytes)``.
        """
        used, limit = self._base.read_memory()
        if "memory_limit_bytes" in self._fixed:
            limit = int(self._fixed["memory_limit_bytes"])
        if "memory_used_bytes" in self._fixed:
            used = int(self._fixed["memory_used_bytes"])
        elif "memory_percent" in self._fixed:
            used = int(float(self._fixed["memory_percent"]) / 100.0 * limit)
        return used, limit
