"""
Admission control under CPU overload: a real uvicorn service on 127.0.0.1 whose
handler burns CPU, driven open-loop at 1x, 2x and 4x its capacity.

Three servers, each its own uvicorn process: the bare service, the service behind
a static concurrency limit tuned at 1x (of a few slot counts, the one with the
best goodput at 1x, then the lower p99), and the service behind the supervisor's
adaptive limiter (``AdmissionMiddleware`` on ``sup.admission``, default settings).
The capacity is what a few back-to-back clients reach on the bare service; the
unloaded latency is that of one client at a time. Each phase sends requests at a
fixed rate whatever the server does, each with a client timeout, so overload is
real: the bare service admits everything and its queue grows with the phase.

Figures per phase: goodput (200 answers per second), p50 and p99 latency of the
admitted (200) requests measured from their scheduled send time, rejections
(503/429) and client timeouts. The bare service is restarted after each overload
phase: the work of requests whose clients gave up keeps running in it for tens of
seconds and would otherwise load the next phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._harness import CaseStats, Comparison, Curve, SuiteContext, TargetCheck, percentile
from ._open_loop import PhaseResult, closed_loop, open_loop

if TYPE_CHECKING:
    from collections.abc import Iterator

VARIANTS = {"bare": "bare_app", "static limit": "static_app", "adaptive": "adaptive_app"}
LOADS = (1.0, 2.0, 4.0)
WORK_MS = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """One uvicorn process serving a factory of :mod:`benchmarks._admission_app`."""

    def __init__(self, factory: str, env: dict[str, str]) -> None:
        self.factory = factory
        self.env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = _free_port()
        root = Path(__file__).resolve().parent.parent
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            f"benchmarks._admission_app:{self.factory}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
        env = {**os.environ, "PYTHONPATH": str(root), **self.env}
        self.process = subprocess.Popen(command, cwd=root, env=env)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()  # its backlog is of no interest; waiting for it would take long
        process.wait()

    async def ready(self) -> None:
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(OSError):
                    result = await closed_loop(self.port, 1, 0.05, path="/health")
                    if result.ok_latencies_ms:
                        return
                await asyncio.sleep(0.1)

    async def restart(self) -> None:
        self.stop()
        self.start()
        await self.ready()


@contextlib.contextmanager
def _servers(env: dict[str, str]) -> Iterator[dict[str, _Server]]:
    servers = {name: _Server(factory, env) for name, factory in VARIANTS.items()}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else math.nan


async def run(ctx: SuiteContext) -> None:
    """
    Calibrate on the bare service, tune the static limit at 1x, then run every
    load on every server, interleaved over the rounds.

    Cancellation:
        Propagates; every server process is killed on the way out.
    """
    import resource_supervisor.integrations.fastapi  # noqa: F401 - skip early when missing

    phase_s = ctx.scale(6.0, 1.5)
    rounds = ctx.scale(2, 1)
    loads = LOADS if not ctx.quick else (1.0, 4.0)
    env = {"ADMISSION_BENCH_WORK_MS": str(WORK_MS), "ADMISSION_BENCH_SLICES": "5"}
    with _servers(env) as servers:
        bare = servers["bare"]
        bare.start()
        await bare.ready()
        await closed_loop(bare.port, 2, 0.5)  # warm up
        unloaded = await closed_loop(bare.port, 1, ctx.scale(3.0, 1.0))
        unloaded_p50 = _p(unloaded.ok_latencies_ms, 50)
        unloaded_p99 = _p(unloaded.ok_latencies_ms, 99)
        peak = await closed_loop(bare.port, 4, ctx.scale(3.0, 1.0))
        capacity = peak.goodput
        client_timeout = max(1.0, 25 * unloaded_p50 / 1e3)
        # The static limit, tuned at 1x: of a few candidates, the one with the best
        # goodput at 1x (within 2 %, the lower p99).
        static = servers["static limit"]
        tuned: list[tuple[float, float, int]] = []
        # (quick runs try one candidate: there is no time for a sweep)
        for slots in ctx.scale((2, 4, 8, 16), (4,)):
            static.env = {**env, "ADMISSION_BENCH_STATIC": str(slots)}
            await static.restart()
            trial = await open_loop(
                static.port, capacity, ctx.scale(3.0, 1.0), client_timeout=client_timeout
            )
            tuned.append((trial.goodput, _p(trial.ok_latencies_ms, 99), slots))
        best = max(goodput for goodput, _, _ in tuned)
        static_slots = min(
            (p99 if not math.isnan(p99) else math.inf, slots)
            for goodput, p99, slots in tuned
            if goodput >= 0.98 * best
        )[1]
        if len(tuned) > 1:
            static.env = {**env, "ADMISSION_BENCH_STATIC": str(static_slots)}
            await static.restart()
        servers["adaptive"].start()
        for name in ("static limit", "adaptive"):
            await servers[name].ready()
            # warm up, and let the adaptive limit learn the service
            warm = ctx.scale(1.0, 0.5)
            await open_loop(servers[name].port, capacity * 0.5, warm, client_timeout=client_timeout)

        runs: dict[tuple[str, float], list[PhaseResult]] = {}
        names = list(VARIANTS)
        bare_overloads = rounds * sum(1 for load in loads if load > 1.0)
        for r in range(rounds):
            for load in loads:
                shift = (r + loads.index(load)) % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    server = servers[name]
                    result = await open_loop(
                        server.port, capacity * load, phase_s, client_timeout=client_timeout
                    )
                    runs.setdefault((name, load), []).append(result)
                    if name == "bare" and load > 1.0:
                        bare_overloads -= 1
                        if bare_overloads:  # its backlog would load the next phases
                            await server.restart()
                    await asyncio.sleep(0.2)

    def med(name: str, load: float, figure: str) -> float:
        values = []
        for result in runs[(name, load)]:
            if figure == "goodput":
                values.append(result.goodput)
            elif figure == "p50":
                values.append(_p(result.ok_latencies_ms, 50))
            elif figure == "p99":
                values.append(_p(result.ok_latencies_ms, 99))
            elif figure == "rejected":
                values.append(result.rejected / result.seconds)
            elif figure == "timeouts":
                values.append(result.timeouts / result.seconds)
            else:
                values.append(float(result.errors))
        return statistics.median(values)

    rows = [
        [
            name,
            f"{load:g}x",
            f"{capacity * load:.0f}",
            f"{med(name, load, 'goodput'):.1f}",
            f"{100 * med(name, load, 'goodput') / capacity:.0f}%",
            f"{med(name, load, 'p50'):.1f}",
            f"{med(name, load, 'p99'):.1f}",
            f"{med(name, load, 'rejected'):.0f}",
            f"{med(name, load, 'timeouts'):.0f}",
            f"{med(name, load, 'errors'):.0f}",
        ]
        for load in loads
        for name in VARIANTS
    ]
    ctx.table(
        f"open-loop load, {phase_s:g} s phases, median of {rounds} round(s)",
        [
            "server",
            "load",
            "offered req/s",
            "goodput req/s",
            "of capacity",
            "p50 ms (200s)",
            "p99 ms (200s)",
            "rejected /s",
            "timeouts /s",
            "errors",
        ],
        rows,
    )
    ctx.table(
        "calibration (bare service)",
        [
            "capacity req/s",
            "unloaded p50 ms",
            "unloaded p99 ms",
            "client timeout s",
            "static limit (candidates: 1x goodput req/s, p99 ms)",
        ],
        [
            [
                f"{capacity:.1f}",
                f"{unloaded_p50:.1f}",
                f"{unloaded_p99:.1f}",
                f"{client_timeout:g}",
                f"{static_slots} ("
                + "; ".join(f"{n}: {g:.0f}, {p:.0f}" for g, p, n in tuned)
                + ")",
            ]
        ],
    )
    for name in VARIANTS:
        ctx.curve(
            Curve(
                f"{name} goodput",
                loads,
                tuple(med(name, load, "goodput") / capacity for load in loads),
                "offered load (x capacity)",
                "goodput / capacity",
            )
        )
        ctx.curve(
            Curve(
                f"{name} p99",
                loads,
                tuple(med(name, load, "p99") / unloaded_p99 for load in loads),
                "offered load (x capacity)",
                "p99 of 200s / unloaded p99",
            )
        )

    good4 = [r.goodput / capacity for r in runs[("adaptive", 4.0)]]
    p99_4 = [_p(r.ok_latencies_ms, 99) / unloaded_p99 for r in runs[("adaptive", 4.0)]]
    cost1 = [
        a.goodput / b.goodput if b.goodput else math.inf
        for a, b in zip(runs[("adaptive", 1.0)], runs[("bare", 1.0)], strict=True)
    ]
    bare4 = [_p(r.ok_latencies_ms, 99) / unloaded_p99 for r in runs[("bare", 4.0)]]
    checks = (
        TargetCheck(
            "adaptive at 4x: goodput >= 90% of the 1x capacity",
            statistics.median(good4),
            0.9,
            "speedup",
            statistics.median(good4) >= 0.9,
            "x capacity",
        ),
        TargetCheck(
            "adaptive at 4x: p99 of admitted <= 2x the unloaded p99",
            statistics.median(p99_4),
            2.0,
            "ratio",
            statistics.median(p99_4) <= 2.0,
            "x",
        ),
        TargetCheck(
            "adaptive at 1x: goodput >= 97% of the bare service's",
            statistics.median(cost1),
            0.97,
            "speedup",
            statistics.median(cost1) >= 0.97,
            "x",
        ),
    )

    def stats(name: str) -> CaseStats:
        values = tuple(r.goodput for r in runs[(name, 4.0)])
        base = tuple(r.goodput for r in runs[("bare", 4.0)])
        ratios = tuple(v / b if b else math.inf for v, b in zip(values, base, strict=True))
        return CaseStats(
            name,
            values,
            statistics.median(values),
            min(values),
            ratios,
            statistics.median(ratios),
            min(ratios),
        )

    ctx.result.comparisons.append(
        Comparison(
            f"goodput at 4x capacity ({capacity * 4:.0f} req/s offered)",
            "req/s (higher is better)",
            "bare",
            rounds,
            tuple(stats(name) for name in VARIANTS),
            checks,
            note=(
                f"bare service p99 at 4x: {statistics.median(bare4):.1f}x the unloaded p99 "
                f"(bounded only by the {client_timeout:g} s client timeout)."
            ),
        )
    )
    ctx.note(
        f"Each request burns {WORK_MS:g} ms of CPU on the event loop in 5 slices; "
        "client and servers share this machine's CPUs. Latency counts from each "
        "request's scheduled send time. The static limit admits its slots and queues "
        "as many again, without a wait bound."
    )
    ctx.note(f"Measured at {time.strftime('%H:%M:%S')} with {os.cpu_count()} CPUs.")
