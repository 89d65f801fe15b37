"""
The process lane's serializers: per-call cost of ``cloudpickle`` against ``pickle``.

Two lanes of one worker each, one per serializer, run the same trivial call in
turn (sequential calls, so the figure is the whole per-call overhead): a
module-level function on both, and on the cloudpickle lane also a lambda and a
closure (which the default serializer cannot send at all). A second table gives
the cost of serializing the call alone, in the service, without a worker.
"""

from __future__ import annotations

import contextlib
import pickle
import time

from ._harness import Case, SuiteContext, Target, sequential_case
from ._work import noop, square

PICKLE = "pickle, module-level function"
CLOUD = "cloudpickle, module-level function"
CLOUD_LAMBDA = "cloudpickle, lambda"
CLOUD_CLOSURE = "cloudpickle, closure over a 1 KiB list"


async def run(ctx: SuiteContext) -> None:
    """
    Compare per-call overhead of the two serializers on real lanes.

    Cancellation:
        Propagates; both lanes are closed on the way out.
    """
    from resource_supervisor._config import ConcurrencySettings
    from resource_supervisor.broker._local._lane import ProcessLane
    from resource_supervisor.broker._pickling import (
        by_value_serializer,
        pickle_call,
        prepare_call,
    )

    n = ctx.scale(2_000, 400)
    table = list(range(128))  # captured by value with the closure: about 1 KiB pickled
    lam = lambda: None  # noqa: E731 - the point: a lambda
    closure = lambda: len(table)  # noqa: E731

    async with contextlib.AsyncExitStack() as stack:
        by_reference = await stack.enter_async_context(
            ProcessLane(ConcurrencySettings(serializer="pickle"), max_workers=1)
        )
        by_value = await stack.enter_async_context(
            ProcessLane(ConcurrencySettings(serializer="cloudpickle"), max_workers=1)
        )
        calls = {
            PICKLE: lambda: by_reference.run(noop, (), timeout=None),
            CLOUD: lambda: by_value.run(noop, (), timeout=None),
            CLOUD_LAMBDA: lambda: by_value.run(lam, (), timeout=None),
            CLOUD_CLOSURE: lambda: by_value.run(closure, (), timeout=None),
        }
        for call in calls.values():  # warm up: start both workers
            for _ in range(50):
                await call()
        await ctx.compare(
            f"sequential calls, {n} per round, one worker each",
            [sequential_case(name, call, n) for name, call in calls.items()],
            unit="us/call",
            baseline=PICKLE,
            targets=[Target("cloudpickle <= 1.5x pickle per call", CLOUD, PICKLE, max_ratio=1.5)],
        )

    dumps = by_value_serializer("cloudpickle")

    def encode_cost(func: object, args: tuple[object, ...], serializer: object) -> Case:
        async def measure() -> float:
            reps = ctx.scale(20_000, 4_000)
            start = time.perf_counter()
            for _ in range(reps):
                pickle_call(*prepare_call(func, args, serializer))  # type: ignore[arg-type]
            return (time.perf_counter() - start) * 1e6 / reps

        return Case("", measure)

    encoders = {
        "pickle, square(3)": encode_cost(square, (3,), None),
        "cloudpickle, square(3)": encode_cost(square, (3,), dumps),
        "cloudpickle, lambda": encode_cost(lam, (), dumps),
        "cloudpickle, closure over a 1 KiB list": encode_cost(closure, (), dumps),
    }
    await ctx.compare(
        "encoding one call in the service (no worker)",
        [Case(name, case.measure) for name, case in encoders.items()],
        unit="us/call",
        baseline="pickle, square(3)",
    )
    ctx.note(
        f"pickle.dumps of (square, (3,)) is {len(pickle.dumps((square, (3,))))} bytes; "
        f"with cloudpickle {len(pickle_call(*prepare_call(square, (3,), dumps)))}; "
        f"the closure {len(pickle_call(*prepare_call(closure, (), dumps)))}."
    )
