"""
Calls cancelled while they run on a Dask worker: their slot and their worker stay taken.

Covers: :class:`Drains`. Dask cannot interrupt a running task: cancelling its future
frees it on the scheduler at once, but the worker's only thread keeps running it to
the end, and the scheduler then believes that worker idle (dask/distributed#2617).
Handing the caller's slot back at once would over-commit the cluster, and a new call
could be placed behind the still-running one, or fail with it if it kills the worker.
So the slot of such a call is released only when the worker reports it finished
(polled with ``client.run`` on that one worker, backing off from 20 ms to 0.5 s), and
while it runs the lane sends new calls to the other workers. A worker that cannot be
asked (gone, no answer within 5 s, or ``run`` blocked by the operator) ends the wait:
its slot is freed.

Does not cover: admission and submission (:mod:`._lane`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from ..._lifecycle import AsyncClosable

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("Drains", "running_worker")

FIRST_POLL_SECONDS: Final = 0.02
MAX_POLL_SECONDS: Final = 0.5
ASK_SECONDS: Final = 5.0
_LOG = logging.getLogger("resource_supervisor.broker.dask")


async def running_worker(client: object, key: str) -> str | None:
    """
    Return the address of the worker the scheduler gave task *key*, if any.

    Args:
        client: The lane's asynchronous client.
        key: The task's key.

    Returns:
        The worker's address, or ``None`` when the task is not on a worker (still
        queued) or the scheduler cannot be asked.
    """
    try:
        processing = await client.scheduler.processing()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - unknown: treat the task as not running
        return None
    for address, keys in processing.items():
        if key in keys:
            return str(address)
    return None


async def _still_executing(client: object, key: str, worker: str) -> bool:
    def probe(key: str, dask_worker: object = None) -> bool:
        # Runs inside the worker; a nested function is pickled by value. A task
        # cancelled mid-run stays in the worker's executing set until it returns.
        state = getattr(dask_worker, "state", None)
        return any(task.key == key for task in getattr(state, "executing", ()))

    # A worker that died is not refused at once (the scheduler retries connecting),
    # so the question has a deadline: no answer frees the slot.
    found = await asyncio.wait_for(
        client.run(probe, key, workers=[worker]),  # type: ignore[attr-defined]
        ASK_SECONDS,
    )
    return bool(found.get(worker, False))


class Drains(AsyncClosable):
    """The calls cancelled mid-run that still occupy a worker, and their slots."""

    def __init__(self) -> None:
        self._per_worker: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy_workers(self) -> frozenset[str]:
        """Workers still running a cancelled call."""
        return frozenset(self._per_worker)

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, client: object, key: str, worker: str, release: Callable[[], None]) -> None:
        """
        Wait in the background until *worker* has finished task *key*, then *release*.

        Args:
            client: The lane's asynchronous client.
            key: The cancelled task's key.
            worker: The address of the worker running it.
            release: Gives the call's slot back; called exactly once.
        """
        self._per_worker[worker] += 1
        task = asyncio.get_running_loop().create_task(self._wait(client, key, worker, release))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(
        self, client: object, key: str, worker: str, release: Callable[[], None]
    ) -> None:
        pause = FIRST_POLL_SECONDS
        try:
            while await _still_executing(client, key, worker):
                await asyncio.sleep(pause)
                pause = min(MAX_POLL_SECONDS, pause * 1.5)
        except Exception as exc:  # noqa: BLE001 - the worker cannot say: free the slot
            _LOG.debug("cannot ask worker %s about cancelled task %s: %r", worker, key, exc)
        finally:
            self._per_worker[worker] -= 1
            if self._per_worker[worker] <= 0:
                del self._per_worker[worker]
            release()

    async def aclose(self) -> None:
        """Stop waiting; every pending slot is released."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
