"""
The seam behind the process lane: what a CPU backend must provide.

Covers: the :class:`ProcessBackend` protocol that the local lane
(:mod:`._local._lane`, one single-worker ``ProcessPoolExecutor`` per slot) and the
distributed lane (:mod:`._dask._lane`) both implement, so that
``Executors.run_in_process`` and ``Executors.map_in_processes`` keep one contract
whichever backend runs the work. Does not cover: the thread lane
(:mod:`._threads`) or how chunks are formed for maps (:mod:`._mapping`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping

    from .._snapshot import MetricValue, PressureLevel

__all__ = ("ProcessBackend",)

T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class ProcessBackend(Protocol):
    """
    A place to run picklable CPU-bound calls, with crash isolation and admission control.

    Implementations guarantee, by default, *at most once*: a call whose worker dies
    fails with :class:`WorkerCrashedError` and is never re-run; calls queued behind
    it run elsewhere. An unpicklable callable or argument raises
    :class:`UnpicklableError` before any worker is taken. At CRITICAL pressure,
    a call beyond ``queue_limit`` queued calls raises :class:`OverloadedError`.
    """

    name: str
    """``"local"`` or ``"dask"``: shown in stats as ``process_lane_backend``."""

    # The timeout kills the worker running the call, which a cancel scope cannot do.
    async def run(
        self,
        func: Callable[..., T],
        args: tuple[object, ...],
        *,
        timeout: float | None,  # noqa: ASYNC109
    ) -> T:
        """Run ``func(*args)`` in a worker and return its result (see Executors)."""
        ...

    def map(
        self,
        func: Callable[[T], R],
        items: Iterable[T] | AsyncIterable[T],
        *,
        ordered: bool,
        chunksize: int | None,
        max_in_flight: int | None,
    ) -> AsyncIterator[R]:
        """Lazily map *func* over *items* in chunks (see Executors.map_in_processes)."""
        ...

    def set_pressure(self, level: PressureLevel) -> None:
        """Tell the backend the supervisor's pressure level (sizing and admission)."""
        ...

    def metrics(self) -> Mapping[str, MetricValue]:
        """Flat ``process_*`` metrics for the snapshot; cheap, never blocks."""
        ...

    async def aclose(self) -> None:
        """Stop every worker this backend owns; idempotent; always closes."""
        ...
