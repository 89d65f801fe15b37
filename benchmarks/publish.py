"""
Publishing one snapshot to 1, 100 and 1000 subscribers: the publisher's time, and
the time until the last subscriber has it; ``Broadcaster`` vs one anyio memory
object stream per subscriber.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

import anyio

from ._harness import Case, SuiteContext, Target

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_ITEM = object()


class _Counter:
    """Sets its event when every subscriber has received the current item."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.event = anyio.Event()

    def reset(self) -> None:
        self.count = 0
        self.event = anyio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.event.set()


async def _broadcaster_round(subscribers: int, publishes: int) -> tuple[float, float]:
    from resource_supervisor._streams import Broadcaster

    broadcaster: Broadcaster[object] = Broadcaster()
    publish_us: list[float] = []
    last_us: list[float] = []
    received = [0.0] * subscribers
    counter = _Counter(subscribers)
    with contextlib.ExitStack() as stack:
        subs = [stack.enter_context(broadcaster.subscribe(buffer=4)) for _ in range(subscribers)]

        async def reader(i: int) -> None:
            sub = subs[i]
            while True:
                await sub.receive()
                received[i] = time.perf_counter()
                counter.hit()

        async with anyio.create_task_group() as tg:
            for i in range(subscribers):
                tg.start_soon(reader, i)
            await anyio.wait_all_tasks_blocked()
            for _ in range(publishes):
                counter.reset()
                start = time.perf_counter()
                broadcaster.publish(_ITEM)
                publish_us.append((time.perf_counter() - start) * 1e6)
                await counter.event.wait()
                last_us.append((max(received) - start) * 1e6)
            tg.cancel_scope.cancel()
    return min(publish_us), sorted(last_us)[len(last_us) // 2]


async def _anyio_round(subscribers: int, publishes: int) -> tuple[float, float]:
    publish_us: list[float] = []
    last_us: list[float] = []
    received = [0.0] * subscribers
    counter = _Counter(subscribers)
    with contextlib.ExitStack() as stack:
        pairs = [anyio.create_memory_object_stream[object](4) for _ in range(subscribers)]
        for send, receive in pairs:
            stack.enter_context(send)
            stack.enter_context(receive)

        async def reader(i: int) -> None:
            async for _ in pairs[i][1]:
                received[i] = time.perf_counter()
                counter.hit()

        async with anyio.create_task_group() as tg:
            for i in range(subscribers):
                tg.start_soon(reader, i)
            await anyio.wait_all_tasks_blocked()
            for _ in range(publishes):
                counter.reset()
                start = time.perf_counter()
                for send, _ in pairs:
                    send.send_nowait(_ITEM)
                publish_us.append((time.perf_counter() - start) * 1e6)
                await counter.event.wait()
                last_us.append((max(received) - start) * 1e6)
            tg.cancel_scope.cancel()
    return min(publish_us), sorted(last_us)[len(last_us) // 2]


async def run(ctx: SuiteContext) -> None:
    """
    Measure publish latency at three fan-outs.

    Cancellation:
        Propagates; every subscription and stream is closed on the way out.
    """
    import resource_supervisor._streams  # noqa: F401 - skip early when missing

    publishes = ctx.scale(30, 10)
    for subscribers in (1, 100, 1000):

        def case(
            name: str,
            fn: Callable[[int, int], Awaitable[tuple[float, float]]],
            part: int,
            subscribers: int = subscribers,
        ) -> Case:
            async def measure() -> float:
                return (await fn(subscribers, publishes))[part]

            return Case(f"{name} {'publish' if part == 0 else 'last subscriber has it'}", measure)

        targets = (
            [
                Target(
                    "publish to 1000 subscribers <= 200 us",
                    "Broadcaster publish",
                    max_value=200.0,
                ),
                Target(
                    "publish to 1000 <= 1.05x anyio streams (200 us vs their 190 us)",
                    "Broadcaster publish",
                    "anyio streams publish",
                    max_ratio=200 / 190,
                ),
            ]
            if subscribers == 1000
            else []
        )
        await ctx.compare(
            f"{subscribers} subscriber(s)",
            [
                case("Broadcaster", _broadcaster_round, 0),
                case("Broadcaster", _broadcaster_round, 1),
                case("anyio streams", _anyio_round, 0),
                case("anyio streams", _anyio_round, 1),
            ],
            unit="us",
            baseline="anyio streams publish",
            targets=targets,
            note="publish: min over the round's publishes; last subscriber: median.",
        )
