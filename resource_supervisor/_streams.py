"""
Bounded broadcast: one publisher, many subscribers, each with its own small buffer.

Covers: :class:`Broadcaster` (sync, non-blocking :meth:`~Broadcaster.publish`) and
:class:`Subscription` (an async iterator with a bounded buffer that drops its oldest
item, or keeps only the latest, when the reader falls behind). A slow subscriber never
slows the publisher or the other subscribers and never grows memory.

How: the broadcaster keeps one shared log, a ``deque`` whose ``maxlen`` is the largest
buffer among open subscriptions, and numbers every item it publishes. A subscription
is a cursor (the number of the next item it reads) plus its own bound; it sees the
newest *buffer* items from its cursor on, and what fell out of its window counts as
dropped when it is next read or looked at. So :meth:`~Broadcaster.publish` is one
append however many subscribe; receivers blocked in :meth:`~Subscription.receive`
are woken by one loop callback that publish schedules (waking a task costs the loop
the same wherever it is done; this keeps it out of the publisher's call). The log
always holds the newest ``max(buffer)`` items, read or not, while anyone subscribes.

Does not cover: what is published (snapshots, from :mod:`._sampler`), or how the
supervisor exposes subscriptions (:mod:`._supervisor`). Exporters that stream
snapshots (:mod:`.integrations`) are subscribers like any other.

Why not anyio memory object streams: a send to a full stream either blocks or fails;
we want the opposite (drop the oldest, count it), and a cheaper publish (see
``BASELINES.md``: 1000 subscribers <= 200 us of publisher time).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import anyio
from anyio.lowlevel import checkpoint

from ._lifecycle import AsyncClosable

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


class Broadcaster(AsyncClosable, Generic[T]):
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

    __slots__ = (
        "_bounds",
        "_closed",
        "_dropped",
        "_log",
        "_published",
        "_subscriptions",
        "_waiters",
    )

    def __init__(self) -> None:
        # A dict keeps subscription order and gives O(1) removal.
        self._subscriptions: dict[Subscription[T], None] = {}
        # The newest items, as many as the largest open buffer; item number n (0-based,
        # n < _published) sits at index n - _published (counted from the right).
        self._log: deque[T] = deque(maxlen=0)
        # Open subscriptions per buffer size, to keep the log's maxlen the largest.
        self._bounds: dict[int, int] = {}
        # Futures of receivers blocked on any subscription. Raw asyncio futures:
        # waking one costs a fraction of an anyio.Event.set().
        self._waiters: dict[asyncio.Future[None], None] = {}
        self._published = 0
        self._dropped = 0  # drops already taken into account by their subscription
        self._closed = False

    def publish(self, item: T) -> None:
        """
        Append *item* for every open subscription and wake waiting receivers.

        Never awaits or blocks, and costs the same however many subscribe: one
        ``deque`` append, plus, if receivers are blocked in
        :meth:`Subscription.receive`, scheduling one loop callback that wakes them
        all (that callback costs one future completion per blocked receiver, about
        0.3 ms for 1000, on the loop right after this call returns).

        Args:
            item: The item to publish. It is shared, not copied: publish immutable values.

        Raises:
            anyio.ClosedResourceError: If the broadcaster was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._published += 1
        self._log.append(item)
        waiters = self._waiters
        if waiters:
            # Waking them is one loop callback, not work in the publisher's call.
            self._waiters = {}
            next(iter(waiters)).get_loop().call_soon(self._wake, waiters)

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
        bound = 1 if policy == "latest" else buffer
        subscription = Subscription[T](self, bound)
        if not self._closed:
            self._subscriptions[subscription] = None
            self._bounds[bound] = self._bounds.get(bound, 0) + 1
            if self._log.maxlen is None or bound > self._log.maxlen:
                self._log = deque(self._log, maxlen=bound)
        return subscription

    def statistics(self) -> BroadcastStatistics:
        """
        Return the current counters (see :class:`BroadcastStatistics`).

        Costs one step per open subscription (their pending drops are counted here).
        """
        return BroadcastStatistics(
            subscribers=len(self._subscriptions),
            published=self._published,
            dropped=self.dropped_total(),
        )

    @property
    def subscribers(self) -> int:
        """Subscriptions open now (``statistics().subscribers``, without the view)."""
        return len(self._subscriptions)

    def dropped_total(self) -> int:
        """``statistics().dropped`` alone: one step per open subscription, no view built."""
        head = self._published
        pending = 0
        for subscription in self._subscriptions:
            behind = head - subscription._cursor - subscription._bound
            if behind > 0:
                pending += behind
        return self._dropped + pending

    def close(self) -> None:
        """
        End every subscription; the sync twin of :meth:`aclose`. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._wake_all()

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

    def _unsubscribe(self, subscription: Subscription[T]) -> None:
        if subscription not in self._subscriptions:
            return  # made after close: never subscribed
        del self._subscriptions[subscription]
        bound = subscription._bound
        left = self._bounds[bound] - 1
        if left:
            self._bounds[bound] = left
            return
        del self._bounds[bound]
        largest = max(self._bounds, default=0)
        if largest < bound:
            self._log = deque(self._log, maxlen=largest)

    def _wake_all(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = {}
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @staticmethod
    def _wake(waiters: dict[asyncio.Future[None], None]) -> None:
        # Run by the loop right after a publish: one future completion (and so one
        # task step scheduled) per receiver that was blocked at publish time.
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class Subscription(AsyncClosable, AsyncIterator[T], Generic[T]):
    """
    One reader's bounded view of a :class:`Broadcaster`: an async iterator of items.

    Also a sync and an async context manager; leaving the block closes the
    subscription (also when the block is cancelled). Made by
    :meth:`Broadcaster.subscribe`, not directly.
    """

    __slots__ = ("_bound", "_broadcaster", "_closed", "_cursor", "_dropped", "_waiters")

    def __init__(self, broadcaster: Broadcaster[T], bound: int) -> None:
        self._broadcaster = broadcaster
        self._bound = bound
        self._cursor = broadcaster._published  # number of the next item to read
        self._dropped = 0  # drops already moved past (see _pending_drops)
        # Futures of this subscription's blocked receivers, to wake them on close;
        # also listed in the broadcaster's waiters, which publish wakes.
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False  # this side closed: ClosedResourceError

    @property
    def dropped(self) -> int:
        """Items this subscription lost because its buffer was full."""
        return self._dropped + self._pending_drops()

    @property
    def buffered(self) -> int:
        """Items waiting to be received (never more than the buffer size)."""
        if self._closed:
            return 0
        return min(self._broadcaster._published - self._cursor, self._bound)

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
        broadcaster = self._broadcaster
        behind = broadcaster._published - self._cursor
        if behind:
            if behind > self._bound:
                self._skip_dropped()
                behind = self._bound
            self._cursor += 1
            return broadcaster._log[-behind]
        if broadcaster._closed:
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
            items are only taken by the call that returns them, so an item published
            while (or after) a receiver was cancelled stays for the next call.
        """
        await checkpoint()
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._broadcaster._waiters
            waiters[waiter] = None
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                # A woken receiver was unlisted by the broadcaster; a cancelled one
                # unlists itself (from a newer dict, the pop is a no-op).
                self._broadcaster._waiters.pop(waiter, None)
                self._waiters.remove(waiter)

    def close(self) -> None:
        """
        Unsubscribe and drop buffered items. Idempotent.

        Receivers blocked on this subscription, and later ones, get
        :exc:`anyio.ClosedResourceError`.
        """
        if self._closed:
            return
        broadcaster = self._broadcaster
        self._skip_dropped()
        self._cursor = broadcaster._published  # what is left is discarded, not dropped
        self._closed = True
        broadcaster._unsubscribe(self)
        for waiter in self._waiters:
            broadcaster._waiters.pop(waiter, None)
            if not waiter.done():
                waiter.set_result(None)

    async def aclose(self) -> None:
        """
        Unsubscribe; the async twin of :meth:`close`. Idempotent.

        Cancellation:
            The subscription is closed before the call checks for cancellation, so a
            cancelled ``aclose()`` still closes it.
        """
        self.close()
        await checkpoint()

    def _pending_drops(self) -> int:
        """Items that fell out of this open subscription's window since it last looked."""
        if self._closed:
            return 0
        behind = self._broadcaster._published - self._cursor - self._bound
        return behind if behind > 0 else 0

    def _skip_dropped(self) -> None:
        """Count the pending drops and move the cursor to the oldest item still kept."""
        pending = self._pending_drops()
        if pending:
            self._dropped += pending
            self._broadcaster._dropped += pending
            self._cursor += pending

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
