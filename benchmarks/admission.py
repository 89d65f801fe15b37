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

Figures per phase: goodput (200 answers per second that arrived within the
phase's sending time, shifted by the unloaded latency), p50 and p99 latency of all
admitted (200) requests measured from their scheduled send time, rejections
(503/429) and client timeouts. The bare service is restarted after each overload
phase: the work of requests whose clients gave up keeps running in it for tens of
seconds and would otherwise load the next phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ._cpu_cgroup import CpuCgroup, open_cpu_cgroup
from ._harness import CaseStats, Comparison, Curve, SuiteContext, TargetCheck, percentile
from ._open_loop import PhaseResult, closed_loop, open_loop

if TYPE_CHECKING:
    from collections.abc import Iterator

VARIANTS = {"bare": "bare_app", "static limit": "static_app", "adaptive": "adaptive_app"}
LOADS = (1.0, 2.0, 4.0)
WORK_MS = 40.0
CPUS = 0.5
"""Each server's CPU quota (``ADMISSION_BENCH_CPUS``; ``none`` for no cgroup)."""
TIME_LIMITS = {"quick": 120.0, "full": 900.0}
SHARES = 8192
"""The cgroups' ``cpu.shares``: eight times a plain process's weight."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """One uvicorn process serving a factory of :mod:`benchmarks._admission_app`."""

    def __init__(self, factory: str, env: dict[str, str], group: CpuCgroup | None) -> None:
        self.factory = factory
        self.env = env
        self.group = group
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
            self.factory if ":" in self.factory else f"benchmarks._admission_app:{self.factory}",
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
        if self.group is not None:
            # Before it has imported anything: every thread it starts stays inside.
            self.group.add(self.process.pid)

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

    def throttling(self) -> tuple[int, int, float] | None:
        return self.group.throttling() if self.group is not None else None


@contextlib.contextmanager
def _budgets(cpus: float | None) -> Iterator[tuple[dict[str, CpuCgroup | None], str]]:
    """
    One CPU cgroup per server (quota *cpus*, a high weight) and one for this
    process (the load generator: the weight only), all removed on the way out.
    """
    groups: dict[str, CpuCgroup | None] = {}
    reason = ""
    client: CpuCgroup | None = None
    try:
        if cpus is not None:
            for name in VARIANTS:
                group, reason = open_cpu_cgroup(name.replace(" ", "-"), cpus=cpus, shares=SHARES)
                groups[name] = group
                if group is None:
                    break
            client, reason = (
                open_cpu_cgroup("client", cpus=None, shares=SHARES)
                if reason == ""
                else (None, reason)
            )
            if client is not None:
                client.add(os.getpid())
        if reason or cpus is None:
            for group in groups.values():
                if group is not None:
                    group.remove()
            groups = dict.fromkeys(VARIANTS)
        yield groups, reason
    finally:
        if client is not None:
            client.remove()  # moves this process back to its own cgroup first
        for group in groups.values():
            if group is not None:
                group.remove()


@contextlib.contextmanager
def _servers(
    env: dict[str, str], groups: dict[str, CpuCgroup | None]
) -> Iterator[dict[str, _Server]]:
    servers = {name: _Server(factory, env, groups[name]) for name, factory in VARIANTS.items()}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


MAX_CONNECTIONS = 128


def _connections(rate: float, client_timeout: float) -> int:
    """Connections opened before a phase: as many as its requests can hold at once."""
    return min(MAX_CONNECTIONS, math.ceil(rate * client_timeout))


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else math.nan


@dataclasses.dataclass(slots=True)
class _Calibration:
    capacity: float
    unloaded_p50: float
    unloaded_p99: float
    load_average: tuple[float, float, float]


async def _calibrate(bare: _Server, seconds: float) -> _Calibration:
    """Capacity (four back-to-back clients) and unloaded latency (one) of the bare service."""
    load_average = os.getloadavg()
    await closed_loop(bare.port, 2, 0.3)  # warm up
    unloaded = await closed_loop(bare.port, 1, seconds)
    peak = await closed_loop(bare.port, 4, seconds)
    return _Calibration(
        peak.throughput,
        _p(unloaded.ok_latencies_ms, 50),
        _p(unloaded.ok_latencies_ms, 99),
        load_average,
    )


def _throttled(
    before: tuple[int, int, float] | None, after: tuple[int, int, float] | None
) -> float:
    if before is None or after is None or after[0] == before[0]:
        return math.nan
    return (after[1] - before[1]) / (after[0] - before[0])


async def run(ctx: SuiteContext) -> None:
    """
    Calibrate on the bare service, tune the static limit at 1x, then run every
    load on every server, interleaved over the rounds, re-measuring the capacity
    and unloaded latency at the start of each round.

    Cancellation:
        Propagates; every server process is killed and every cgroup removed on
        the way out.
    """
    import resource_supervisor.integrations.fastapi  # noqa: F401 - skip early when missing

    phase_s = ctx.scale(10.0, 4.0)
    rounds = ctx.scale(3, 1)
    loads = LOADS if not ctx.quick else (1.0, 4.0)
    env = {"ADMISSION_BENCH_WORK_MS": str(WORK_MS), "ADMISSION_BENCH_SLICES": "5"}
    cpus_text = os.environ.get("ADMISSION_BENCH_CPUS", str(CPUS))
    cpus = None if cpus_text in ("", "none") else float(cpus_text)
    with _budgets(cpus) as (groups, reason), _servers(env, groups) as servers:
        if reason:
            print(f"admission: servers run without a CPU quota ({reason})", file=sys.stderr)
        bare = servers["bare"]
        bare.start()
        await bare.ready()
        first = await _calibrate(bare, ctx.scale(3.0, 2.0))
        client_timeout = max(1.0, 25 * first.unloaded_p50 / 1e3)
        # The static limit, tuned at 1x: of a few candidates, the one with the best
        # goodput at 1x (within 2 %, the lower p99).
        static = servers["static limit"]
        tuned: list[tuple[float, float, int]] = []
        # (quick runs try one candidate: there is no time for a sweep)
        for slots in (1, 2, 4, 8) if not ctx.quick else (2,):
            static.env = {**env, "ADMISSION_BENCH_STATIC": str(slots)}
            await static.restart()
            trial = await open_loop(
                static.port,
                first.capacity,
                ctx.scale(3.0, 1.0),
                client_timeout=client_timeout,
                settle=first.unloaded_p50 / 1e3,
                connections=_connections(first.capacity, client_timeout),
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
            warm = ctx.scale(2.0, 1.0)
            await open_loop(
                servers[name].port, first.capacity * 0.5, warm, client_timeout=client_timeout
            )

        runs: dict[tuple[str, float], list[PhaseResult]] = {}
        throttled: dict[tuple[str, float], list[float]] = {}
        calibrations: list[_Calibration] = []
        names = list(VARIANTS)
        for r in range(rounds):
            calibration = first if r == 0 else await _calibrate(bare, ctx.scale(3.0, 2.0))
            calibrations.append(calibration)
            for load in loads:
                shift = (r + loads.index(load)) % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    server = servers[name]
                    before = server.throttling()
                    result = await open_loop(
                        server.port,
                        calibration.capacity * load,
                        phase_s,
                        client_timeout=client_timeout,
                        settle=calibration.unloaded_p50 / 1e3,
                        connections=_connections(calibration.capacity * load, client_timeout),
                    )
                    throttled.setdefault((name, load), []).append(
                        _throttled(before, server.throttling())
                    )
                    runs.setdefault((name, load), []).append(result)
                    if name == "bare" and load > 1.0:
                        await server.restart()  # its backlog would load the next phases
                    await asyncio.sleep(0.2)

    capacity = statistics.median(c.capacity for c in calibrations)

    def med(name: str, load: float, figure: str) -> float:
        values = []
        for result in runs[(name, load)]:
            if figure == "goodput":
                values.append(result.goodput)
            elif figure == "of capacity":
                values.append(result.goodput / calibrations[len(values)].capacity)
            elif figure == "throttled":
                values.append(throttled[(name, load)][len(values)])
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
            f"{100 * med(name, load, 'of capacity'):.0f}%",
            f"{med(name, load, 'p50'):.1f}",
            f"{med(name, load, 'p99'):.1f}",
            f"{med(name, load, 'rejected'):.0f}",
            f"{med(name, load, 'timeouts'):.0f}",
            f"{med(name, load, 'errors'):.0f}",
            f"{100 * med(name, load, 'throttled'):.0f}%",
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
            "of the round's capacity",
            "p50 ms (200s)",
            "p99 ms (200s)",
            "rejected /s",
            "timeouts /s",
            "errors",
            "quota periods throttled",
        ],
        rows,
    )
    ctx.table(
        "calibration of each round (bare service)",
        [
            "round",
            "load average (1, 5, 15 min)",
            "capacity req/s",
            "unloaded p50 ms",
            "unloaded p99 ms",
        ],
        [
            [
                str(i + 1),
                ", ".join(f"{v:.1f}" for v in c.load_average),
                f"{c.capacity:.1f}",
                f"{c.unloaded_p50:.1f}",
                f"{c.unloaded_p99:.1f}",
            ]
            for i, c in enumerate(calibrations)
        ],
    )
    ctx.table(
        "setup",
        [
            "CPU budget of each server",
            "client timeout s",
            "static limit (candidates: 1x goodput req/s, p99 ms)",
        ],
        [
            [
                f"{cpus:g} CPU (cgroup quota)"
                if not reason and cpus is not None
                else f"none ({reason or 'disabled'})",
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
                tuple(med(name, load, "of capacity") for load in loads),
                "offered load (x capacity)",
                "goodput / capacity",
            )
        )
        ctx.curve(
            Curve(
                f"{name} p99",
                loads,
                tuple(
                    statistics.median(
                        _p(result.ok_latencies_ms, 99) / c.unloaded_p99
                        for result, c in zip(runs[(name, load)], calibrations, strict=True)
                    )
                    for load in loads
                ),
                "offered load (x capacity)",
                "p99 of 200s / unloaded p99",
            )
        )

    def per_round(name: str, load: float) -> list[tuple[PhaseResult, _Calibration]]:
        return list(zip(runs[(name, load)], calibrations, strict=True))

    good4 = [r.goodput / c.capacity for r, c in per_round("adaptive", 4.0)]
    p99_4 = [_p(r.ok_latencies_ms, 99) / c.unloaded_p99 for r, c in per_round("adaptive", 4.0)]
    cost1 = [
        a.goodput / b.goodput if b.goodput else math.inf
        for a, b in zip(runs[("adaptive", 1.0)], runs[("bare", 1.0)], strict=True)
    ]
    bare4 = [_p(r.ok_latencies_ms, 99) / c.unloaded_p99 for r, c in per_round("bare", 4.0)]
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
        "client and servers share this machine's CPUs, each server in its own CPU "
        "cgroup (the quota above, a weight of "
        f"{SHARES} shares so that it gets the quota on a busy machine), the load "
        "generator in one with the same weight. Latency counts from each "
        "request's scheduled send time, on keep-alive connections opened before "
        "the phase (as the unloaded latency's). The static limit admits its slots and queues "
        "as many again, without a wait bound."
    )
    ctx.note(
        f"Measured at {time.strftime('%H:%M:%S')} with {os.cpu_count()} CPUs; load "
        "averages in the calibration table. Goodput is divided by the capacity "
        "measured at the start of the same round."
    )
