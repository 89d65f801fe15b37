"""Tests for the bounded broadcast (resource_supervisor._streams)."""

from __future__ import annotations

from collections import deque

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._streams import Broadcaster, BroadcastStatistics, Subscription


async def test_receive_returns_items_in_publish_order() -> None:
    """Items come out of a subscription in the order they were published."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=8) as subscription:
        for item in range(5):
            broadcaster.publish(item)
        assert [await subscription.receive() for _ in range(5)] == [0, 1, 2, 3, 4]
    await broadcaster.aclose()


async def test_full_buffer_drops_oldest_and_counts() -> None:
    """A full buffer drops its oldest item, and each drop is counted once."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=3) as subscription:
        for item in range(5):
            broadcaster.publish(item)
        assert subscription.dropped == 2
        assert [subscription.receive_nowait() for _ in range(3)] == [2, 3, 4]
        assert broadcaster.statistics().dropped == 2
    await broadcaster.aclose()


async def test_latest_policy_keeps_only_newest() -> None:
    """The "latest" policy keeps one item, the newest; replaced items count as dropped."""
    broadcaster = Broadcaster[str]()
    with broadcaster.subscribe(buffer=16, policy="latest") as subscription:
        for item in ("a", "b", "c"):
            broadcaster.publish(item)
        assert subscription.buffered == 1
        assert subscription.receive_nowait() == "c"
        assert subscription.dropped == 2
        with pytest.raises(anyio.WouldBlock):
            subscription.receive_nowait()
    await broadcaster.aclose()


async def test_slow_subscriber_does_not_affect_fast_one() -> None:
    """A subscriber that never reads loses items; one that keeps up loses none."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=2) as slow, broadcaster.subscribe(buffer=2) as fast:
        received = []
        for item in range(100):
            broadcaster.publish(item)
            received.append(fast.receive_nowait())
        assert received == list(range(100))
        assert fast.dropped == 0
        assert slow.dropped == 98
    await broadcaster.aclose()


async def test_never_reading_subscriber_stays_bounded() -> None:
    """100k publishes to a subscriber that never reads keep its buffer at its bound."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=16) as subscription:
        for item in range(100_000):
            broadcaster.publish(item)
        assert subscription.buffered == 16
        assert subscription.dropped == 100_000 - 16
        assert subscription.receive_nowait() == 100_000 - 16
    await broadcaster.aclose()


async def test_publish_wakes_blocked_receiver() -> None:
    """A receiver blocked on an empty buffer gets the next published item."""
    broadcaster = Broadcaster[int]()
    got: list[int] = []
    with broadcaster.subscribe() as subscription:
        async with anyio.create_task_group() as tg:

            async def receive() -> None:
                got.append(await subscription.receive())

            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            broadcaster.publish(7)
    assert got == [7]
    await broadcaster.aclose()


async def test_concurrent_receivers_share_items_without_duplicates() -> None:
    """Two receivers on one subscription each get a distinct item."""
    broadcaster = Broadcaster[int]()
    got: list[int] = []
    with broadcaster.subscribe() as subscription:
        async with anyio.create_task_group() as tg:

            async def receive() -> None:
                got.append(await subscription.receive())

            tg.start_soon(receive)
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            broadcaster.publish(1)
            broadcaster.publish(2)
    assert sorted(got) == [1, 2]
    await broadcaster.aclose()


async def test_cancelled_receive_loses_no_item() -> None:
    """A receive() cancelled while blocked must not consume the next item."""
    broadcaster = Broadcaster[object]()
    item = object()
    with broadcaster.subscribe(buffer=1) as subscription:
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscription.receive)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        broadcaster.publish(item)
        assert subscription.receive_nowait() is item
    await broadcaster.aclose()


async def test_receive_cancelled_after_wakeup_loses_nothing() -> None:
    """A receiver woken and cancelled in the same tick either returns the item or leaves it."""
    broadcaster = Broadcaster[int]()
    got: list[int] = []
    with broadcaster.subscribe() as subscription:

        async def receive() -> None:
            got.append(await subscription.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive)
            await anyio.wait_all_tasks_blocked()
            broadcaster.publish(1)  # wakes the receiver ...
            tg.cancel_scope.cancel()  # ... which is cancelled before it runs
        left = [subscription.receive_nowait()] if subscription.buffered else []
        assert got + left == [1]
    await broadcaster.aclose()


async def test_with_block_unsubscribes_on_exit() -> None:
    """Leaving a `with` or `async with` block unsubscribes."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe():
        async with broadcaster.subscribe():
            assert broadcaster.statistics().subscribers == 2
        assert broadcaster.statistics().subscribers == 1
    assert broadcaster.statistics().subscribers == 0
    await broadcaster.aclose()


async def test_cancelled_subscriber_unsubscribes() -> None:
    """A subscriber cancelled inside its block is unsubscribed (count back to 0)."""
    broadcaster = Broadcaster[int]()

    async def consume() -> None:
        async with broadcaster.subscribe() as subscription:
            async for _ in subscription:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        assert broadcaster.statistics().subscribers == 2
        tg.cancel_scope.cancel()
    assert broadcaster.statistics().subscribers == 0
    broadcaster.publish(1)  # no subscriber left to hold it
    assert broadcaster.statistics() == BroadcastStatistics(subscribers=0, published=1, dropped=0)
    await broadcaster.aclose()


async def test_aclose_drains_then_ends_async_for() -> None:
    """After aclose, an `async for` first gets the buffered items, then ends."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe() as subscription:
        broadcaster.publish(1)
        broadcaster.publish(2)
        await broadcaster.aclose()
        assert [item async for item in subscription] == [1, 2]
        with pytest.raises(anyio.EndOfStream):
            await subscription.receive()
        with pytest.raises(anyio.EndOfStream):
            subscription.receive_nowait()


async def test_aclose_ends_blocked_async_for() -> None:
    """aclose wakes a subscriber blocked in `async for`, whose loop then ends."""
    broadcaster = Broadcaster[int]()
    seen: list[int] = []
    ended = anyio.Event()

    async def consume() -> None:
        with broadcaster.subscribe() as subscription:
            seen.extend([item async for item in subscription])
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        broadcaster.publish(5)
        await anyio.wait_all_tasks_blocked()
        await broadcaster.aclose()
        with anyio.fail_after(5):
            await ended.wait()
    assert seen == [5]
    assert broadcaster.statistics().subscribers == 0


async def test_aclose_is_idempotent_and_refuses_publish() -> None:
    """aclose may be called twice; publishing afterwards raises ClosedResourceError."""
    broadcaster = Broadcaster[int]()
    await broadcaster.aclose()
    await broadcaster.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        broadcaster.publish(1)


async def test_cancelled_aclose_still_closes() -> None:
    """A cancelled aclose() still ends the subscriptions."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe() as subscription:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await broadcaster.aclose()
        with pytest.raises(anyio.EndOfStream):
            subscription.receive_nowait()


async def test_subscribe_after_close_is_ended() -> None:
    """A subscription made on a closed broadcaster ends at once and is not counted."""
    broadcaster = Broadcaster[int]()
    await broadcaster.aclose()
    with broadcaster.subscribe() as subscription:
        assert broadcaster.statistics().subscribers == 0
        assert [item async for item in subscription] == []


async def test_closed_subscription_raises_closed_resource_error() -> None:
    """Receiving from a closed subscription raises ClosedResourceError; close is idempotent."""
    broadcaster = Broadcaster[int]()
    subscription = broadcaster.subscribe()
    broadcaster.publish(1)
    subscription.close()
    subscription.close()
    with pytest.raises(anyio.ClosedResourceError):
        subscription.receive_nowait()
    with pytest.raises(anyio.ClosedResourceError):
        await subscription.receive()
    await subscription.aclose()
    await broadcaster.aclose()


async def test_close_wakes_blocked_receiver_with_closed_resource_error() -> None:
    """Closing a subscription wakes its blocked receiver with ClosedResourceError."""
    broadcaster = Broadcaster[int]()
    errors: list[BaseException] = []
    subscription = broadcaster.subscribe()

    async def receive() -> None:
        try:
            await subscription.receive()
        except anyio.ClosedResourceError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        subscription.close()
    assert len(errors) == 1
    await broadcaster.aclose()


async def test_statistics_count_closed_subscriptions_drops() -> None:
    """statistics() counts publishes, open subscribers and drops of closed subscriptions."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=1):
        with broadcaster.subscribe(buffer=2):
            for item in range(4):
                broadcaster.publish(item)
        stats = broadcaster.statistics()
        assert stats == BroadcastStatistics(subscribers=1, published=4, dropped=3 + 2)
        # The two counters a snapshot reads, without the view, are the view's.
        assert (broadcaster.subscribers, broadcaster.dropped_total()) == (1, 3 + 2)
    assert (broadcaster.subscribers, broadcaster.dropped_total()) == (0, 3 + 2)
    await broadcaster.aclose()


@pytest.mark.parametrize(
    ("buffer", "policy", "message"),
    [(0, "drop_oldest", "buffer"), (1, "newest", "policy")],
)
async def test_subscribe_rejects_bad_arguments(buffer: int, policy: str, message: str) -> None:
    """subscribe() rejects a buffer below 1 and an unknown policy with ValueError."""
    broadcaster = Broadcaster[int]()
    with pytest.raises(ValueError, match=message):
        broadcaster.subscribe(buffer, policy)  # type: ignore[arg-type]
    await broadcaster.aclose()


def test_subscription_is_an_async_iterator() -> None:
    """A subscription is an async iterator of itself."""
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe() as subscription:
        assert isinstance(subscription, Subscription)
        assert subscription.__aiter__() is subscription
    broadcaster.close()


_OPS = st.lists(
    st.tuples(st.sampled_from(("subscribe", "publish", "receive", "close")), st.integers(0, 5)),
    max_size=60,
)


@given(ops=_OPS)
def test_shared_log_matches_one_bounded_deque_per_subscriber(ops: list[tuple[str, int]]) -> None:
    """
    Any mix of subscribe/publish/receive/close gives each subscription exactly what
    its own bounded deque would hold, with the same drop counts and totals.
    """
    broadcaster = Broadcaster[int]()
    subs: list[Subscription[int]] = []
    models: list[deque[int] | None] = []
    dropped: list[int] = []
    published = 0
    for op, arg in ops:
        if op == "subscribe":
            subs.append(broadcaster.subscribe(buffer=arg + 1))
            models.append(deque(maxlen=arg + 1))
            dropped.append(0)
        elif op == "publish":
            broadcaster.publish(published)
            for i, model in enumerate(models):
                if model is not None:
                    if len(model) == model.maxlen:
                        dropped[i] += 1
                    model.append(published)
            published += 1
        elif subs:
            i = arg % len(subs)
            model = models[i]
            if op == "receive" and model is not None:
                if model:
                    assert subs[i].receive_nowait() == model.popleft()
                else:
                    with pytest.raises(anyio.WouldBlock):
                        subs[i].receive_nowait()
            elif op == "close" and model is not None:
                subs[i].close()
                models[i] = None
        for sub, model, lost in zip(subs, models, dropped, strict=True):
            assert sub.buffered == (len(model) if model is not None else 0)
            assert sub.dropped == lost
    assert broadcaster.statistics() == BroadcastStatistics(
        subscribers=sum(model is not None for model in models),
        published=published,
        dropped=sum(dropped),
    )
    broadcaster.close()


async def test_subscribers_with_other_buffers_keep_their_items() -> None:
    """
    Closing the largest-buffer subscription, or opening a larger one, leaves every
    other subscription its full window of unread items.
    """
    broadcaster = Broadcaster[int]()
    with broadcaster.subscribe(buffer=2) as small:
        with broadcaster.subscribe(buffer=5):
            for item in range(4):
                broadcaster.publish(item)
        assert [small.receive_nowait() for _ in range(2)] == [2, 3]
        broadcaster.publish(4)
        broadcaster.publish(5)
        with broadcaster.subscribe(buffer=4) as large:
            for item in range(6, 11):
                broadcaster.publish(item)
            assert [small.receive_nowait() for _ in range(2)] == [9, 10]
            assert [large.receive_nowait() for _ in range(4)] == [7, 8, 9, 10]
            assert (small.dropped, large.dropped) == (2 + 5, 1)
    await broadcaster.aclose()


async def test_one_publish_wakes_receivers_of_every_subscription() -> None:
    """
    One publish wakes the receivers blocked on every subscription; a receiver
    cancelled meanwhile leaves the item in its subscription.
    """
    broadcaster = Broadcaster[int]()
    got: list[int] = []
    with (
        broadcaster.subscribe() as first,
        broadcaster.subscribe() as second,
        broadcaster.subscribe() as third,
    ):

        async def receive(subscription: Subscription[int]) -> None:
            got.append(await subscription.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, first)
            tg.start_soon(receive, second)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(receive, third)
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()
            broadcaster.publish(3)
        assert got == [3, 3]
        assert (first.buffered, second.buffered, third.buffered) == (0, 0, 1)
    await broadcaster.aclose()
