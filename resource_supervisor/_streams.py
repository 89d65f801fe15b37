"""
Bounded broadcast: one publisher, many subscribers, each with its own small buffer.

Covers: :class:`Broadcaster` (sync, non-blocking :meth:`~Broadcaster.publish`) and
:class:`Subscription` (an async iterator with a bounded buffer that drops its oldest
item, or keeps only the latest, when the reader falls behind). A slow subscriber never
slows the publisher or the other subscribers and never grows memory: each buffer is a
``deque`` with a ``maxlen``, and publishing is one append per subscriber plus waking a
receiver only if one is waiting.

Does not cover: what is published (snapshots, from :mod:`._sampler`), or how the
supervisor exposes subscriptions (:mod:`._supervisor`). Exporters that stream
snapshots (:mod:`.integrations`) are subscribers like any other.

Why not anyio memory object streams: a send to a full stream either blocks or fails;
we want the opposite (drop the oldest, count it), and a cheaper publish (see
``BASELINES.md``: 1000 subscribers <= 200 us of publisher time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import anyio
from anyio.lowlevel import checkpoint

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = ("BroadcastStatistics", "Broadcaster", "Subscription", "SubscriptionPolicy")

T = TypeVar("T")

SubscriptionPolicy = Literal["drop_oldest", "latest"]
"""What a full buffer does: drop its oldest item, or keep only the newest one."""


@dataclass(frozen=True, slots=True)
class BroadcastStatistics:
    """
    Counters of a :class:`Broadcaster`.

    Attributes:
        subscribers: Subscriptions currently open.
        published: Items published since the broadcaster was made.
        dropped: Items lost by slow subscribers, over all subscriptions ever made
            (closed ones included).
    """

    subscribers: int
    published: int
    dropped: int


class Broadcaster(Generic[T]):
    """
    Publish items to every open :class:`Subscription`, never blocking.

    Each subscription holds at most ``buffer`` items. When a reader falls behind, its
    oldest item is dropped and counted (``Subscription.dropped``); the publisher and
    the other subscribers are unaffected.

    Example::

        broadcaster = Broadcaster[MetricsSnapshot]()
        with broadcaster.subscribe(buffer=16) as subscription:
            async for snapshot in subscription:
                ...
    """

    __slots__ = ("_closed", "_dropped", "_published", "_subscriptions")

    def __init__(self) -> None:
        # A dict keeps subscription order and gives O(1) removal.
        self._subscriptions: dict[Subscription[T], None] = {}
        self._published = 0
        self._dropped = 0
        self._closed = False

    def publish(self, item: T) -> None:
        """
        Append *item* to every open subscription's buffer and wake waiting receivers.

        Never awaits or blocks; the work is one ``deque`` append per subscriber.

        Args:
            item: The item to publish. It is shared, not copied: publish immutable values.

        Raises:
            anyio.ClosedResourceError: If the broadcaster was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._published += 1
        dropped = 0
        for subscription in self._subscriptions:
            buffer = subscription._buffer
            if len(buffer) == buffer.maxlen:
                subscription._dropped += 1
                dropped += 1
            buffer.append(item)
            if subscription._waiters:
                subscription._wake()
        if dropped:
            self._dropped += dropped

    def subscribe(
        self, buffer: int = 16, policy: SubscriptionPolicy = "drop_oldest"
    ) -> Subscription[T]:
        """
        Open a subscription that receives every item published from now on.

        Use it as a context manager (``with`` or ``async with``) so that it is closed,
        and unsubscribed, however the block ends.

        Args:
            buffer: How many unread items to keep; beyond it the oldest is dropped.
            policy: ``"drop_oldest"`` keeps the newest *buffer* items;
                ``"latest"`` keeps only the newest item (as ``buffer=1``), for
                readers that only care about the current state.

        Returns:
            The new subscription. On a closed broadcaster it is already ended:
            receiving from it raises :exc:`anyio.EndOfStream`.

        Raises:
            ValueError: If *buffer* is below 1 or *policy* is unknown.
        """
        if buffer < 1:
            raise ValueError(f"buffer must be at least 1, got {buffer}")
        if policy not in ("drop_oldest", "latest"):
            raise ValueError(f"policy must be 'drop_oldest' or 'latest', got {policy!r}")
        subscription = Subscription[T](self, 1 if policy == "latest" else buffer)
        if self._closed:
            subscription._ended = True
        else:
            self._subscriptions[subscription] = None
        return subscription

    def statistics(self) -> BroadcastStatistics:
        """Return the current counters (see :class:`BroadcastStatistics`)."""
        return BroadcastStatistics(
            subscribers=len(self._subscriptions),
            published=self._published,
            dropped=self._dropped,
        )

    def close(self) -> None:
        """
        End every subscription; the sync twin of :meth:`aclose`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription._end()

    async def aclose(self) -> None:
        """
        End every subscription.

        Receivers first drain what is already buffered, then get
        :exc:`anyio.EndOfStream`; ``async for`` loops end. Receivers blocked on an
        empty buffer are woken at once. Later :meth:`publish` calls raise
        :exc:`anyio.ClosedResourceError`. Idempotent.

        Cancellation:
            The broadcaster is closed before the call checks for cancellation, so a
            cancelled ``aclose()`` still closes it (then raises the cancellation).
        """
        self.close()
        await checkpoint()


class Subscription(AsyncIterator[T], Generic[T]):
    """
    One reader's bounded view of a :class:`Broadcaster`: an async iterator of items.

    Also a sync and an async context manager; leaving the block closes the
    subscription (also when the block is cancelled). Made by
    :meth:`Broadcaster.subscribe`, not directly.
    """

    __slots__ = ("_broadcaster", "_buffer", "_closed", "_dropped", "_ended", "_waiters")

    def __init__(self, broadcaster: Broadcaster[T], maxlen: int) -> None:
        self._broadcaster = broadcaster
        self._buffer: deque[T] = deque(maxlen=maxlen)
        self._dropped = 0
        # Futures of receivers waiting on an empty buffer (usually none or one). Raw
        # asyncio futures: waking one costs a fraction of an anyio.Event.set().
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False  # this side closed: ClosedResourceError
        self._ended = False  # the broadcaster closed: EndOfStream after draining

    @property
    def dropped(self) -> int:
        """Items this subscription lost because its buffer was full."""
        return self._dropped

    @property
    def buffered(self) -> int:
        """Items waiting to be received (never more than the buffer size)."""
        return len(self._buffer)

    def receive_nowait(self) -> T:
        """
        Return the oldest buffered item without waiting.

        Returns:
            The item.

        Raises:
            anyio.ClosedResourceError: If this subscription was closed.
            anyio.EndOfStream: If the broadcaster closed and the buffer is drained.
            anyio.WouldBlock: If the buffer is empty.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if self._buffer:
            return self._buffer.popleft()
        if self._ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> T:
        """
        Return the oldest buffered item, waiting for one if the buffer is empty.

        Returns:
            The item.

        Raises:
            anyio.ClosedResourceError: If this subscription was closed (also while
                waiting).
            anyio.EndOfStream: If the broadcaster closed and the buffer is drained.

        Cancellation:
            Checked before anything is taken. A cancelled ``receive()`` takes nothing:
            items are only removed from the buffer by the call that returns them, so
            an item published while (or after) a receiver was cancelled stays for the
            next call.
        """
        await checkpoint()
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                # A woken receiver was unlisted by _wake(); a cancelled one unlists itself.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def close(self) -> None:
        """
        Unsubscribe and drop buffered items. Idempotent.

        Receivers blocked on this subscription, and later ones, get
        :exc:`anyio.ClosedResourceError`.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._broadcaster._subscriptions.pop(self, None)
        self._wake()

    async def aclose(self) -> None:
        """
        Unsubscribe; the async twin of :meth:`close`. Idempotent.

        Cancellation:
            The subscription is closed before the call checks for cancellation, so a
            cancelled ``aclose()`` still closes it.
        """
        self.close()
        await checkpoint()

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- iteration and context management --------------------------------------
    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the subscription (unsubscribe)."""
        self.close()

    async def __aenter__(self) -> Self:
        """
        Return the subscription itself.

        Cancellation:
            Not checked: entering never waits.
        """
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """
        Close the subscription (unsubscribe), however the block ended.

        Cancellation:
            Not checked: the subscription is closed without waiting, also when the
            block was cancelled.
        """
        self.close()
