"""
Every error the library raises, in one tree.

Covers: the exception classes and their messages. Does not cover: where they are
raised (see the lanes in :mod:`resource_supervisor.broker`, :mod:`._config`).

```
ResourceSupervisorError
 +-- ConfigError (also ValueError)        invalid settings: names key, value, reason
 +-- NoSupervisorError (also RuntimeError) Supervisor.current() outside a supervisor
 +-- SupervisorClosedError (also RuntimeError) use after exit
 +-- ExecutorError
      +-- WorkerCrashedError              a worker died while running the call
      |    +-- ClusterConnectionLostError the distributed scheduler went away
      +-- OverloadedError                 admission refused at CRITICAL pressure
      |    +-- AdmissionRejectedError     the admission limit and its queue are full
      +-- CallTimeoutError (also TimeoutError) a per-call timeout expired
      +-- UnpicklableError (also TypeError) the callable or an argument cannot be pickled
```

Warnings, apart from the tree: ``ConfigWarning`` (a ``UserWarning``), for settings
input that is ignored rather than refused (see :mod:`._config_input`).

Every class passes all its constructor arguments to ``super().__init__`` so that it
survives :mod:`pickle` across the process pool.
"""

from __future__ import annotations

__all__ = (
    "AdmissionRejectedError",
    "CallTimeoutError",
    "ClusterConnectionLostError",
    "ConfigError",
    "ConfigWarning",
    "ExecutorError",
    "NoSupervisorError",
    "OverloadedError",
    "ResourceSupervisorError",
    "SupervisorClosedError",
    "UnpicklableError",
    "WorkerCrashedError",
)


class ResourceSupervisorError(Exception):
    """
    Raised by nothing directly: the root of every error this library raises.
    """


class ConfigError(ResourceSupervisorError, ValueError):
    """
    Raised when settings are invalid: names the dotted key path, the value and why,
    and the file they came from. When several keys are invalid, all of them are
    reported at once: the first in :attr:`key`, :attr:`value`, :attr:`reason`, every
    one in :attr:`problems`.

    .. versionchanged:: 0.2 ``source`` and ``more``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        reason: str,
        source: str | None = None,
        more: tuple[tuple[str, object, str], ...] = (),
    ) -> None:
        super().__init__(key, value, reason, source, more)
        self.key = key
        self.value = value
        self.reason = reason
        self.source = source
        """The config file (or ``None`` when the values did not come from one)."""
        self.more = tuple(more)
        """The other invalid keys, as ``(key, value, reason)``."""

    @property
    def problems(self) -> tuple[tuple[str, object, str], ...]:
        """Every invalid key as ``(key, value, reason)``, this error's own first."""
        return ((self.key, self.value, self.reason), *self.more)

    def __str__(self) -> str:
        lines = [f"{key}: invalid value {v!r}: {reason}" for key, v, reason in self.problems]
        first = lines[0] + (f" (in {self.source})" if self.source else "")
        if len(lines) == 1:
            return first
        return f"{first}; {len(lines) - 1} more:\n" + "\n".join(f"  {line}" for line in lines[1:])


class ConfigWarning(UserWarning):
    """
    Issued when settings input is ignored rather than refused: an empty config
    file, a file without a ``resource_management:`` section, or an environment
    variable with the settings prefix that names no setting but looks meant to.

    .. versionadded:: 0.2
    """


class NoSupervisorError(ResourceSupervisorError, RuntimeError):
    """
    Raised by :meth:`Supervisor.current` when no supervisor is running in this context.
    """

    def __str__(self) -> str:
        return (
            "no Supervisor is running here; use `async with Supervisor(...)` "
            "(or the FastAPI lifespan helper) before calling Supervisor.current()"
        )


class SupervisorClosedError(ResourceSupervisorError, RuntimeError):
    """
    Raised when a supervisor or one of its lanes is used before entry or after exit.
    """

    def __init__(self, what: str = "supervisor") -> None:
        super().__init__(what)
        self.what = what

    def __str__(self) -> str:
        return f"{self.what} is not running (used outside `async with`, or after exit)"


class ExecutorError(ResourceSupervisorError):
    """
    Raised by nothing directly: the root of errors from the executor broker.
    """


class WorkerCrashedError(ExecutorError):
    """
    Raised when the worker running a call died before returning (``os._exit``,
    a signal, an out-of-memory kill). Only the call that was running fails; the
    call ran at most once.

    ``reason`` says why, where the lane knows: ``"oom_kill"`` (the kernel's OOM
    killer ended the worker: the memory cgroup's OOM-kill counter rose) or
    ``"memory_pressure"`` (the lane killed the largest worker at CRITICAL
    pressure, before the kernel had to choose); ``None`` otherwise.
    """

    def __init__(
        self,
        function: str,
        exitcode: int | None = None,
        signal: int | None = None,
        detail: str = "",
        reason: str | None = None,
    ) -> None:
        super().__init__(function, exitcode, signal, detail, reason)
        self.function = function
        self.exitcode = exitcode
        self.signal = signal
        self.detail = detail
        self.reason = reason

    def __str__(self) -> str:
        if self.signal is not None:
            how = f"killed by signal {self.signal}"
        elif self.exitcode is not None:
            how = f"exited with code {self.exitcode}"
        else:
            how = "died"
        notes = [str(note) for note in (self.reason, self.detail) if note]
        extra = f" ({'; '.join(notes)})" if notes else ""
        return f"worker running {self.function} {how}{extra}"


class ClusterConnectionLostError(WorkerCrashedError):
    """
    Raised when the connection to a distributed scheduler was lost while a call
    was in flight; whether the call ran is unknown.
    """


class OverloadedError(ExecutorError):
    """
    Raised when a lane refuses new work: the pressure level is CRITICAL and the
    lane's queue already holds ``queue_limit`` calls.
    """

    def __init__(self, lane: str, queued: int, queue_limit: int, level: str) -> None:
        super().__init__(lane, queued, queue_limit, level)
        self.lane = lane
        self.queued = queued
        self.queue_limit = queue_limit
        self.level = level

    def __str__(self) -> str:
        return (
            f"{self.lane} lane refused the call: pressure is {self.level} and "
            f"{self.queued} calls are queued (queue_limit={self.queue_limit})"
        )


class AdmissionRejectedError(OverloadedError):
    """
    Raised by ``sup.admission.slot()`` when the adaptive concurrency limit is
    reached and its wait queue is full, or the caller waited past the queue
    timeout. ``retry_after`` is the measured time for the backlog to drain.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        limit: int,
        in_flight: int,
        queued: int,
        queue_limit: int,
        retry_after: float,
        timed_out: bool = False,  # noqa: FBT001, FBT002  # positional for pickling
    ) -> None:
        super().__init__("admission", queued, queue_limit, "n/a")
        # OverloadedError's arguments are derived: keep our own for pickling.
        self.args = (limit, in_flight, queued, queue_limit, retry_after, timed_out)
        self.limit = limit
        self.in_flight = in_flight
        self.retry_after = retry_after
        self.timed_out = timed_out

    def __str__(self) -> str:
        why = "waited past the queue timeout" if self.timed_out else "the queue is full"
        return (
            f"admission refused the call: {self.in_flight} in flight at limit {self.limit}, "
            f"{why} ({self.queued} queued, queue_limit={self.queue_limit}); "
            f"retry after {self.retry_after:.3g} s"
        )


class CallTimeoutError(ExecutorError, TimeoutError):
    """
    Raised when a call passed ``timeout=`` did not finish in time: a process call's
    worker was killed and replaced; a thread call's thread was abandoned (it runs on,
    counted in ``thread_lane_abandoned``).

    .. versionchanged:: 0.2 ``outcome`` says what became of the call.
    """

    def __init__(
        self, function: str, timeout: float, outcome: str = "its worker was replaced"
    ) -> None:
        super().__init__(function, timeout, outcome)
        self.function = function
        self.timeout = timeout
        self.outcome = outcome

    def __str__(self) -> str:
        return f"{self.function} did not finish within {self.timeout:g} s; {self.outcome}"


class UnpicklableError(ExecutorError, TypeError):
    """
    Raised before any worker is taken when the callable or an argument cannot be
    pickled for a worker process. The pickling error is the ``__cause__``.
    """

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(what, detail)
        self.what = what
        self.detail = detail

    def __str__(self) -> str:
        return f"cannot send {self.what} to a worker process: {self.detail}"
