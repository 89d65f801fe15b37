"""
Calling one metrics provider: its record, its failure streak, and one call under a
timeout.

Covers: :class:`Provider` (a registered provider and its state), :class:`ThreadCall`
(one call of a sync provider in a worker thread) and :func:`call_provider`. Does not
cover: registering providers, validating what they return or counting failures
(:mod:`._sampler`, :mod:`._provider_output`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeAlias

import anyio

from ._participants import run_in_daemon_thread

__all__ = (
    "MetricsProvider",
    "Provider",
    "ProviderFailedError",
    "ProviderResult",
    "ThreadCall",
    "call_provider",
)

ProviderResult: TypeAlias = Mapping[str, float | int]
MetricsProvider: TypeAlias = Callable[[], ProviderResult | Awaitable[ProviderResult]]
"""A sync or async callable returning metric name -> number."""


class ProviderFailedError(Exception):
    """Raised inside the sampler when a provider's result cannot be used."""


class Provider:
    """One registered provider and its failure streak."""

    __slots__ = ("dropping", "failed_samples", "func", "is_async", "name", "thread_busy")

    def __init__(self, name: str, func: MetricsProvider) -> None:
        self.name = name
        self.func = func
        call = getattr(func, "__call__", None)  # noqa: B004  # async __call__ objects
        self.is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)
        self.failed_samples = 0
        self.dropping = False  # its last result had unusable metrics (warned once)
        # Set while a sync call is handed to a worker thread, cleared by that thread
        # when the call returns: a provider still hung from an earlier sample (its
        # thread abandoned) is not started again, so hung threads cannot pile up.
        self.thread_busy = False


class ThreadCall:
    """One call of a sync provider in a worker thread."""

    __slots__ = ("provider", "started")

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.started = False

    def __call__(self) -> ProviderResult | Awaitable[ProviderResult]:
        self.started = True
        try:
            return self.provider.func()
        finally:
            self.provider.thread_busy = False


async def call_provider(provider: Provider, seconds: float) -> ProviderResult:
    """
    Call *provider* once, for at most *seconds*: an async one on the loop, a sync
    one in a daemon thread (not started again while an earlier call still runs).

    Raises:
        TimeoutError: Past *seconds*.
        ProviderFailedError: A sync provider still runs since an earlier sample.

    Cancellation:
        Cancels an async provider; abandons a sync one in its thread.
    """
    with anyio.fail_after(seconds):
        if provider.is_async:
            result = provider.func()
        else:
            if provider.thread_busy:
                raise ProviderFailedError("still running since an earlier sample")
            call = ThreadCall(provider)
            provider.thread_busy = True
            try:
                # a daemon thread: one that never returns is abandoned at the
                # timeout and must not keep the interpreter alive at exit
                result = await run_in_daemon_thread(call)
            except BaseException:
                # A call abandoned while running clears the flag when its thread
                # returns; one cancelled before it started never will.
                if not call.started:
                    provider.thread_busy = False
                raise
        if inspect.isawaitable(result):
            result = await result
    return result
