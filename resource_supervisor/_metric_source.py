"""
The seam through which a supervisor samples, and the GPU readings layered on it.

Covers: :class:`MetricSource`, what a supervisor samples (the built-in
:class:`~._sampler.Sampler`, or a test double such as
:class:`~resource_supervisor.testing.ScriptedSource`), :class:`WrappingSource`, the
delegation a source around another one shares, and :class:`WithGpu`, a
source that adds the GPU figures of a :class:`~._sources._gpu.GpuSource` to every
sample of another source, read off the event loop. Does not cover: reading the
figures themselves (:mod:`._sampler`, :mod:`._sources`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._snapshot import MetricValue
    from ._sources._gpu import GpuSource

__all__ = ("MetricSource", "WithGpu", "WrappingSource")


class MetricSource(Protocol):
    """
    What a supervisor samples: the built-in sampler, or a test double such as
    :class:`resource_supervisor.testing.ScriptedSource` that wraps it.
    """

    def open(self) -> None:
        """Open files or handles; idempotent."""

    def close(self) -> None:
        """Release them; idempotent."""

    def register_provider(
        self,
        name: str,
        provider: Callable[[], Mapping[str, float | int] | Awaitable[Mapping[str, float | int]]],
    ) -> None:
        """Add a named metrics provider."""

    def unregister_provider(self, name: str) -> None:
        """Remove a provider."""

    async def sample(self) -> dict[str, MetricValue]:
        """
        Read every metric.

        Cancellation:
            A cancelled sample publishes nothing; the implementation decides what
            its providers see (the built-in sampler cancels async providers and
            abandons sync ones in their threads).
        """
        ...

    def read_memory(self) -> tuple[int, int]:
        """Working-set bytes and effective limit bytes, cheaply."""
        ...


class WrappingSource:
    """
    A :class:`MetricSource` around another one: opening, closing and providers go
    to *base*; a subclass defines ``sample`` (and whatever else it changes).
    """

    def __init__(self, base: MetricSource) -> None:
        self._base = base

    def open(self) -> None:
        """Open the wrapped source."""
        self._base.open()

    def close(self) -> None:
        """Close the wrapped source."""
        self._base.close()

    def register_provider(
        self,
        name: str,
        provider: Callable[[], Mapping[str, float | int] | Awaitable[Mapping[str, float | int]]],
    ) -> None:
        """Register a provider on the wrapped source."""
        self._base.register_provider(name, provider)

    def unregister_provider(self, name: str) -> None:
        """Unregister a provider from the wrapped source."""
        self._base.unregister_provider(name)


class WithGpu(WrappingSource):
    """
    A :class:`MetricSource` that adds an open GPU source's figures to *base*'s samples.

    The GPU figures (``gpu_count``, ``gpu<i>_...``) are read in a worker thread: NVML
    calls cost microseconds to milliseconds per device. Opening and closing the GPU
    source stays with its owner; this layer only reads it.
    """

    def __init__(self, base: MetricSource, gpu: GpuSource) -> None:
        super().__init__(base)
        self._gpu = gpu

    async def sample(self) -> dict[str, MetricValue]:
        """
        The base source's sample with the GPU figures added.

        Cancellation:
            As the base source's while it samples; once the GPU read has started,
            it runs to its end in its thread (NVML calls cannot be interrupted),
            then the cancellation propagates and nothing is returned.
        """
        data = await self._base.sample()
        data.update(await anyio.to_thread.run_sync(self._gpu.read))
        return data

    def read_memory(self) -> tuple[int, int]:
        """The base source's working set and limit."""
        return self._base.read_memory()
