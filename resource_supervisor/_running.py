"""
Which supervisors run where: the context's innermost one and this loop's stack.

Covers: the context variable and the per-event-loop list that
:meth:`Supervisor.current <._supervisor.Supervisor.current>` reads, and
:func:`resolve_io_workers`. Does not cover: the supervisor itself (:mod:`._supervisor`).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Literal

from anyio.lowlevel import RunVar

if TYPE_CHECKING:
    from ._supervisor import Supervisor

__all__ = ("resolve_io_workers",)

_CURRENT: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "resource_supervisor_current", default=None
)
# Supervisors running on this event loop, innermost last: found by current() from
# tasks that did not inherit the entering task's context (e.g. ASGI request tasks
# when the supervisor was entered in the lifespan task).
_RUNNING: RunVar[list[Supervisor]] = RunVar("resource_supervisor_running")


def _running_on_this_loop() -> list[Supervisor]:
    """This event loop's running supervisors, innermost last (made on first use)."""
    try:
        return _RUNNING.get()
    except LookupError:
        stack: list[Supervisor] = []
        _RUNNING.set(stack)
        return stack


def resolve_io_workers(value: int | Literal["auto"], cpus: int) -> int:
    """
    Resolve ``default_io_workers``: ``auto`` follows CPython's thread-pool default,
    ``min(32, cpus + 4)``: I/O waits rather than computes, so a few threads beyond
    the CPU count keep the CPUs busy while bounding memory for thread stacks.
    """
    return min(32, cpus + 4) if value == "auto" else value
