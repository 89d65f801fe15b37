"""
Survival inside a real memory limit: does a setting keep a workload alive, and at
what throughput?

Every run is a fresh service process in a fresh child memory cgroup of this
process's own (removed afterwards), so the kernel's OOM killer is real. Three parts:

1. **Lanes at a limit.** Bursty CPU calls whose workers keep part of what they
   allocate, beside a service cache that grows per burst, on the supervised
   adaptive lane and on static ``ProcessPoolExecutor`` pools of 2 and 4 workers,
   at a few limits: completed calls per second, OOM kills (the cgroup's counter),
   calls lost, calls shed, peak memory.
2. **Ramp matrix.** A cache growing at 50, 200 and 1000 MiB/s against
   ``monitoring_interval`` 30 s, 1 s and 100 ms, with kernel memory notifications
   on and off where the installed version has them: survived or killed, peak
   percent of the limit, warning crossing to first cleanup handler.
3. **Timelines** of one run of each lane at the tightest limit: memory against the
   limit and both thresholds, the pressure level, cleanups with bytes freed, live
   workers and completed calls per second.

Skipped, with the reason, where a memory cgroup cannot be created (needs root).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio

from ._harness import Panel, SkipSuite, Timeline, Track
from ._survival_runs import MiB, Outcome, outcome, run_in_cgroup

if TYPE_CHECKING:
    from ._harness import SuiteContext
    from ._survival_runs import ChildRun

TIME_LIMITS = {"full": 1200.0, "quick": 360.0}
"""Every run is a fresh service in a fresh cgroup; a loaded machine stretches them."""

WARNING = 60.0
AGGRESSIVE = 75.0
RUN_TIMEOUT = 90.0
LEVELS = {"-": 0.0, "NORMAL": 0.0, "WARNING": 1.0, "CRITICAL": 2.0}


@dataclasses.dataclass(frozen=True, slots=True)
class LaneWorkload:
    """The lane part's bursts (see :mod:`benchmarks._survival_lane`)."""

    bursts: int
    per_burst: int
    call_mib: int = 48
    call_seconds: float = 0.05
    keep_mib: int = 4
    cache_mib: int = 6
    gap_seconds: float = 0.05

    @property
    def calls(self) -> int:
        """Calls the workload submits in total."""
        return self.bursts * self.per_burst

    def config(self) -> dict[str, Any]:
        """The child's config keys for this workload."""
        return dataclasses.asdict(self)


def _supervision(interval: float, limit_bytes: int) -> dict[str, Any]:
    return {
        "interval": interval,
        "warning": WARNING,
        "aggressive": AGGRESSIVE,
        "concurrency": {
            "default_cpu_workers": 4,
            "worker_max_rss_bytes": limit_bytes // 6,
            "queue_limit": 8,
        },
    }


def _notification_choices() -> list[bool | None]:
    """[False, True] where the installed supervisor has kernel notifications, else [None]."""
    from resource_supervisor import SupervisorSettings

    return [False, True] if "memory_notifications" in SupervisorSettings.model_fields else [None]


async def _run(config: dict[str, Any], limit_bytes: int) -> ChildRun:
    return await anyio.to_thread.run_sync(
        lambda: run_in_cgroup(config, limit_bytes, timeout=RUN_TIMEOUT)
    )


def _fmt_peak(result: Outcome) -> str:
    return "-" if result.peak_percent is None else f"{result.peak_percent:.0f}%"


def _verdict(result: Outcome) -> str:
    if not result.survived:
        return "**killed**"
    if result.lost or result.oom_kills:
        return f"**finished, {result.lost} calls lost**"
    return "finished, nothing lost"


async def _lanes(ctx: SuiteContext) -> None:
    workload = LaneWorkload(bursts=ctx.scale(24, 12), per_burst=8)
    limits = ctx.scale((320, 448, 640), (384,))
    contenders: list[tuple[str, dict[str, Any]]] = [
        ("static ProcessPoolExecutor(2)", {"mode": "static", "static_workers": 2}),
        ("static ProcessPoolExecutor(4)", {"mode": "static", "static_workers": 4}),
        ("adaptive lane (max 4), supervised at 0.1 s", {"mode": "adaptive"}),
    ]
    rows: list[list[str]] = []
    for limit_mib in limits:
        limit = limit_mib * MiB
        for name, extra in contenders:
            config = {
                "scenario": "lane",
                **workload.config(),
                **_supervision(0.1, limit),
                **extra,
                "series": limit_mib == limits[0],
            }
            run = await _run(config, limit)
            result = outcome(run, planned_calls=workload.calls)
            rows.append(
                [
                    f"{limit_mib} MiB",
                    name,
                    _verdict(result),
                    f"{result.calls_per_second:.1f}",
                    str(result.completed),
                    str(result.lost),
                    str(result.shed),
                    str(result.oom_kills),
                    _fmt_peak(result),
                ]
            )
            if config["series"]:
                ctx.timeline(_timeline(name, limit_mib, workload, run))
    ctx.table(
        f"Lanes inside a memory limit: {workload.bursts} bursts of {workload.per_burst} calls, "
        f"each holding {workload.call_mib} MiB for {workload.call_seconds * 1e3:.0f} ms and "
        f"keeping {workload.keep_mib} MiB in its worker; service cache +{workload.cache_mib} MiB "
        "per burst",
        [
            "limit",
            "lane",
            "service",
            "calls/s",
            "completed",
            "lost",
            "shed",
            "OOM kills",
            "peak of limit",
        ],
        rows,
    )
    ctx.note(
        "Lost = failed or never answered (a static pool one of whose workers the kernel "
        "kills is broken for every later call; a killed service answers nothing). Shed = "
        "refused with OverloadedError at CRITICAL, by design, so the caller can retry "
        "or answer 503. The static pools run without a supervisor: nothing frees the "
        "service's cache."
    )


def _timeline(name: str, limit_mib: int, workload: LaneWorkload, run: ChildRun) -> Timeline:
    series = [line for line in run.lines if line.get("kind") == "series"]
    t = tuple(float(line["t"]) for line in series)
    used = tuple(line["used"] / MiB for line in series)
    levels = tuple(LEVELS.get(str(line["level"]), 0.0) for line in series)
    workers = tuple(float(line["workers"]) for line in series)
    completed = [int(line["completed"]) for line in series]
    window = 10  # 0.5 s at one record per 50 ms
    rate = tuple(
        (completed[i] - completed[max(0, i - window)]) / max(t[i] - t[max(0, i - window)], 1e-9)
        for i in range(len(series))
    )
    cleanups = [line for line in run.lines if line.get("kind") == "cleanup"]

    def freed(*, aggressive: bool) -> Track:
        chosen = [line for line in cleanups if bool(line["aggressive"]) is aggressive]
        return Track(
            f"{'aggressive' if aggressive else 'normal'} cleanup",
            tuple(float(line["t"]) for line in chosen),
            tuple(line["freed"] / MiB for line in chosen),
            points=True,
        )

    result = outcome(run, planned_calls=workload.calls)
    if not result.survived:
        fate = "the service was OOM-killed"
    elif result.oom_kills:
        fate = f"a worker was OOM-killed, {result.lost} calls lost"
    else:
        fate = "nothing lost"
    return Timeline(
        title=f"{name} in a {limit_mib} MiB memory cgroup ({fate}): bursty 48 MiB CPU calls, "
        "workers and the service cache growing",
        panels=(
            Panel(
                "charged memory (MiB)",
                (Track("cgroup usage", t, used),),
                references=(
                    ("limit", float(limit_mib)),
                    (f"CRITICAL at {AGGRESSIVE:.0f}%", limit_mib * AGGRESSIVE / 100),
                    (f"WARNING at {WARNING:.0f}%", limit_mib * WARNING / 100),
                ),
            ),
            Panel(
                "pressure level",
                (Track("level", t, levels, step=True),),
                y_ticks=((0.0, "NORMAL"), (1.0, "WARNING"), (2.0, "CRITICAL")),
            ),
            Panel(
                "cleanup passes: memory freed (MiB)",
                (freed(aggressive=False), freed(aggressive=True)),
            ),
            Panel("live workers (processes)", (Track("workers", t, workers, step=True),)),
            Panel("completed calls per second (0.5 s window)", (Track("calls/s", t, rate),)),
        ),
    )


async def _matrix(ctx: SuiteContext) -> None:
    limit_mib = 256
    rates = ctx.scale((50, 200, 1000), (200, 1000))
    intervals = ctx.scale((30.0, 1.0, 0.1), (30.0, 0.1))
    rows: list[list[str]] = []
    for notifications in _notification_choices():
        for interval in intervals:
            for rate in rates:
                config = {
                    "scenario": "ramp",
                    "rate_mib_s": rate,
                    "step_mib": 8,
                    "total_mib": 3 * limit_mib,
                    **_supervision(interval, limit_mib * MiB),
                    "notifications": notifications,
                }
                result = outcome(await _run(config, limit_mib * MiB))
                rows.append(
                    [
                        f"{rate} MiB/s",
                        f"{interval:g} s",
                        {None: "not available", False: "off", True: "on"}[notifications],
                        _verdict(result),
                        _fmt_peak(result),
                        "-" if result.reaction_ms is None else f"{result.reaction_ms:.1f}",
                    ]
                )
    ctx.table(
        f"Ramp matrix: a cache growing to {3 * limit_mib} MiB in 8 MiB steps inside a "
        f"{limit_mib} MiB cgroup (WARNING {WARNING:.0f}%, CRITICAL {AGGRESSIVE:.0f}%)",
        [
            "ramp",
            "monitoring_interval",
            "kernel notifications",
            "service",
            "peak of limit",
            "crossing -> first handler (ms)",
        ],
        rows,
    )
    ctx.note(
        "Crossing = the start of the 8 MiB step after which the cgroup's usage was first "
        "past the WARNING threshold, read by the service itself; '-' = no handler ran "
        "before the end (or the kill)."
    )


async def run(ctx: SuiteContext) -> None:
    """
    Run the three parts.

    Cancellation:
        Propagates once the child run in progress ends (each is bounded by its
        timeout); its cgroup is removed on the way out.
    """
    from resource_supervisor.testing import CgroupUnavailableError, memory_cgroup

    try:
        with memory_cgroup(64 * MiB, prefix="rs-bench-probe"):
            pass
    except CgroupUnavailableError as exc:
        raise SkipSuite(str(exc)) from exc
    await _lanes(ctx)
    await _matrix(ctx)
