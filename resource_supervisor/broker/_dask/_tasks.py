"""
One call as one Dask task: its slot, its submission, its outcome, its end.

Covers: :class:`TaskSlot` (a call's token of the lane's limiter, released exactly
once) and :class:`DaskTasks`, the part of :class:`._lane.DaskLane` that waits for a
slot, submits the task (away from workers still running a cancelled call),
translates its outcome (:class:`WorkerCrashedError` for a killed worker,
:class:`ClusterConnectionLostError` for a lost scheduler), and ends it when the
caller gives up: a cancelled call's task is cancelled and its slot drained; a
timed-out call's worker is killed on an owned cluster. Does not cover: admission
(:mod:`._lane`), waiting for a worker to finish a cancelled call
(:mod:`._draining`) or the cluster itself (:mod:`._cluster`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import anyio.to_thread
import psutil
from distributed.client import FutureCancelledError  # ImportError without the extra
from distributed.scheduler import KilledWorker

from ..._exceptions import CallTimeoutError, ClusterConnectionLostError, WorkerCrashedError
from .._pickling import describe_callable
from ._draining import running_worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._draining import Drains

__all__ = ("DaskTasks", "TaskSlot")

T = TypeVar("T")


class TaskSlot:
    """One call's token of the lane's limiter; released exactly once, by any task."""

    __slots__ = ("_held", "_limiter", "draining")

    def __init__(self, limiter: anyio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = True
        self.draining = False  # a drain waits for the call's end and releases it

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)

    def drain(self, drains: Drains, client: object, key: str, worker: str) -> None:
        """Keep the token until *worker* has finished task *key*; the drain releases it."""
        self.draining = True
        drains.start(client, key, worker, self.release)


class _Lane(Protocol):
    """What these methods use of the lane."""

    _limiter: anyio.CapacityLimiter
    _drains: Drains
    _workers: tuple[str, ...]
    _waiting: int
    _completed: int
    _failed: int
    _crashed: int

    def _client(self) -> object: ...
    def _admit(self) -> None: ...
    def _handle_owned(self) -> bool: ...
    async def _run_task(
        self,
        client: object,
        func: Callable[..., T],
        args: tuple[object, ...],
        limit_seconds: float | None,
        slot: TaskSlot,
    ) -> T: ...
    async def _abandon(self, client: object, future: object, key: str) -> str | None: ...


class DaskTasks:
    """Mixin of :class:`._lane.DaskLane`: each call run as one Dask task."""

    async def _submit_and_wait(
        self: _Lane, func: Callable[..., T], args: tuple[object, ...], limit_seconds: float | None
    ) -> T:
        """Admit, wait for a slot, submit, await, release: one Dask task."""
        client = self._client()
        self._admit()
        slot = TaskSlot(self._limiter)
        self._waiting += 1
        try:
            await self._limiter.acquire_on_behalf_of(slot)
        finally:
            self._waiting -= 1
        try:
            return await self._run_task(client, func, args, limit_seconds, slot)
        finally:
            if not slot.draining:
                slot.release()

    async def _run_task(
        self: _Lane,
        client: object,
        func: Callable[..., T],
        args: tuple[object, ...],
        limit_seconds: float | None,
        slot: TaskSlot,
    ) -> T:
        name = describe_callable(func)
        key = f"{getattr(func, '__name__', 'call')}-{uuid.uuid4().hex}"
        placement: dict[str, object] = {}
        busy = self._drains.busy_workers
        if busy:
            # Workers still running a cancelled call look idle to the scheduler:
            # prefer the others (loosely, so a call still runs if they all go away).
            free = [address for address in self._workers if address not in busy]
            if free:
                placement = {"workers": free, "allow_other_workers": True}
        try:
            future = client.submit(func, *args, key=key, pure=False, **placement)  # type: ignore[attr-defined]
        except Exception as exc:
            if getattr(client, "status", "running") != "running":
                self._crashed += 1
                raise ClusterConnectionLostError(name, detail=f"dask: {exc!r}") from exc
            raise
        try:
            with anyio.move_on_after(limit_seconds) as scope:
                result: T = await future
        except KilledWorker as exc:
            self._crashed += 1
            raise WorkerCrashedError(name, detail=f"dask: {exc}") from exc
        except FutureCancelledError as exc:
            self._crashed += 1
            raise ClusterConnectionLostError(name, detail=f"dask: {exc}") from exc
        except Exception:
            self._failed += 1
            raise
        except BaseException:
            # The caller was cancelled: a queued task is dropped; a running one ends
            # on its worker (its result is discarded) and keeps its slot until then.
            with anyio.CancelScope(shield=True):
                worker = await running_worker(client, key)
                with contextlib.suppress(Exception):
                    await client.cancel([future])  # type: ignore[attr-defined]
            if worker is not None:
                slot.drain(self._drains, client, key, worker)
            raise
        else:
            if scope.cancelled_caught:
                self._failed += 1
                with anyio.CancelScope(shield=True):
                    worker = await self._abandon(client, future, key)
                if worker is not None:
                    slot.drain(self._drains, client, key, worker)
                raise CallTimeoutError(name, limit_seconds or 0.0)
            self._completed += 1
            return result
        finally:
            future.release()

    async def _abandon(self: _Lane, client: object, future: object, key: str) -> str | None:
        """
        After a timeout: cancel the task; on an owned cluster kill its worker too.

        Returns the address of a worker still running it (a connected cluster's, or
        one that could not be killed), whose slot must wait until it ends.
        """
        worker = await running_worker(client, key)
        pids: list[int] = []
        with contextlib.suppress(Exception):
            if worker is not None and self._handle_owned():
                found = await client.run(os.getpid, workers=[worker])  # type: ignore[attr-defined]
                pids = [pid for pid in found.values() if isinstance(pid, int)]
        with contextlib.suppress(Exception):
            await client.cancel([future])  # type: ignore[attr-defined]
        # One thread per worker: killing it stops exactly this call, as the local lane
        # replaces a timed-out worker; its nanny starts a new one. Only our own
        # descendants are killed, never a process of a shared cluster. Listing them
        # reads /proc: done off the event loop.
        killed = await anyio.to_thread.run_sync(_kill_descendants, pids)
        return None if killed else worker


def _kill_descendants(pids: list[int]) -> bool:
    """Kill those of *pids* that are descendants of this process; whether one was."""
    ours = {child.pid for child in psutil.Process().children(recursive=True)}
    killed = False
    for pid in pids:
        if pid in ours:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
                killed = True
    return killed
