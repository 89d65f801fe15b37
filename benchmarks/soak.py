"""
Soak run: ``python -m benchmarks.soak [--minutes 10] [--cycles 1000] [--seed N]``
(``make soak``; not part of CI).

Phase 1, mixed load for ``--minutes``: one supervisor serves thread calls, process
calls, maps, subscribers (one reading, one never reading), metrics providers,
cleanup requests and sessions, while faults are injected at random: workers killed
with SIGKILL from outside or ending themselves with ``os._exit``, handlers and
providers that raise or hang, callers cancelled at random moments. It reports
RSS (start, end, peak), outcomes and errors by type, and lost work: every submitted
operation must be accounted for (a result, an expected error, or a cancellation),
and no process call may have run twice (executions are counted in files, see
``tests/_fault_workers.py``).

Phase 2, lifecycle: ``--cycles`` enter/exit cycles that also use the process lane,
counting threads, file descriptors, asyncio tasks and child processes before and
after (the test suite runs 20 such cycles).

Phase 3, faults across processes: ``--service-kills`` times a service
(``tests/_orphan_service.py``) with busy workers and a queued big-argument call is
SIGKILLed; every process it started must be gone within 3 s and no spill file
left. ``--worker-ooms`` times a service holding 150 MiB in a real 300 MiB memory
cgroup (``tests/_oom_service.py``, where cgroups can be created) runs a call
growing at 200 MiB/s: the worker must die, the service survive and say why.

Prints a summary and writes ``benchmarks/results/soak-<timestamp>.json``. Absolute
imports only: worker processes import this file as a plain module.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import functools
import gc
import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import psutil

from resource_supervisor import (
    CleanupRequest,
    Supervisor,
    SupervisorSettings,
    WorkerCrashedError,
)
from tests import _fault_workers as fw

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping

    from resource_supervisor import MetricsSnapshot

MiB = 1024 * 1024
OP_GUARD_SECONDS = 60.0
"""An operation that takes longer than this is counted as hung (lost work)."""
CLIENTS = 12
WORKERS = 2


class Ledger:
    """Counts of submitted operations and how each ended."""

    def __init__(self) -> None:
        self.submitted: collections.Counter[str] = collections.Counter()
        self.ok: collections.Counter[str] = collections.Counter()
        self.cancelled: collections.Counter[str] = collections.Counter()
        self.expected_errors: collections.Counter[str] = collections.Counter()
        self.unexpected_errors: collections.Counter[str] = collections.Counter()
        self.wrong_results: collections.Counter[str] = collections.Counter()
        self.hung: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()

    def accounted(self) -> int:
        """Operations that ended one way or another."""
        return sum(
            sum(counter.values())
            for counter in (
                self.ok,
                self.cancelled,
                self.expected_errors,
                self.unexpected_errors,
                self.wrong_results,
                self.hung,
            )
        )


class LogCounter(logging.Handler):
    """Counts the library's warnings and errors by message template, instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        """Count *record*."""
        self.counts[f"{record.levelname}: {record.msg}"] += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[LogCounter]:
        """Attach to the ``resource_supervisor`` logger (not propagating) while in use."""
        logger = logging.getLogger("resource_supervisor")
        propagate = logger.propagate
        logger.addHandler(self)
        logger.propagate = False
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.propagate = propagate


def worker_pids() -> list[int]:
    """Live worker processes: children of the lane's forkserver."""
    pids: list[int] = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            pids.extend(
                grandchild.pid
                for grandchild in child.children()
                if grandchild.status() != psutil.STATUS_ZOMBIE
            )
    return pids


def soak_settings() -> SupervisorSettings:
    """Sampling twice a second, short timeouts so hanging parts are cut quickly, and
    sessions that expire after 5 s idle (the load opens a new one per operation)."""
    return SupervisorSettings.model_validate(
        {
            "monitoring_interval": 0.5,
            "session_ttl": 5.0,
            "session_ttl_aggressive": 2.0,
            "cleanup_cooldown": 1.0,
            "cleanup_handler_timeout": 0.5,
            "provider_timeout": 0.3,
            "concurrency": {"default_cpu_workers": WORKERS, "default_io_workers": 8},
        }
    )


def failing_thread_call(item: int) -> int:
    """Raise ``ValueError`` (an error the caller expects to see unchanged)."""
    raise ValueError(f"thread call {item} refused")


class Load:
    """Phase 1: mixed load with injected faults on one supervisor."""

    def __init__(self, sup: Supervisor, rng: random.Random, directory: str) -> None:
        self.sup = sup
        self.rng = rng
        self.directory = directory
        self.ledger = Ledger()
        self.next_item = 0
        self.exit_items: set[int] = set()
        self.ok_items: set[int] = set()
        self.crashed_items: set[int] = set()
        self.rss_samples: list[int] = []
        self.never_read_max_buffered = 0
        self.reader_received = 0
        self.release_providers = threading.Event()

    def item(self) -> int:
        """A fresh item number for an exactly-once process call."""
        self.next_item += 1
        return self.next_item

    # -- operations ------------------------------------------------------------------
    async def op_thread(self) -> str:
        """A thread call; sometimes one that raises."""
        item = self.item()
        if self.rng.random() < 0.1:
            with contextlib.suppress(ValueError):
                await self.sup.executors.run_in_thread(failing_thread_call, item)
                return "wrong"
            self.ledger.expected_errors["ValueError"] += 1
            return "counted"
        delay = self.rng.uniform(0.0, 0.01)
        abandon = self.rng.random() < 0.3
        await self.sup.executors.run_in_thread(time.sleep, delay, abandon_on_cancel=abandon)
        return "ok"

    async def op_process(self) -> str:
        """A recorded process call; sometimes its worker ends itself with os._exit."""
        item = self.item()
        if self.rng.random() < 0.05:
            self.exit_items.add(item)
            self.ledger.faults["os._exit"] += 1
            try:
                await self.sup.executors.run_in_process(
                    fw.exit_on, self.directory, frozenset({item}), item
                )
            except WorkerCrashedError:
                self.crashed_items.add(item)
                self.ledger.expected_errors["WorkerCrashedError"] += 1
                return "counted"
            return "wrong"
        delay = self.rng.uniform(0.0, 0.02)
        try:
            result = await self.sup.executors.run_in_process(
                fw.sleepy_square, self.directory, delay, item
            )
        except WorkerCrashedError:
            self.crashed_items.add(item)
            self.ledger.expected_errors["WorkerCrashedError"] += 1
            return "counted"
        if result != item * item:
            return "wrong"
        self.ok_items.add(item)
        return "ok"

    async def op_map(self) -> str:
        """A map of squares; a killed worker may end it with WorkerCrashedError."""
        count = self.rng.randrange(10, 2000)
        first = self.rng.randrange(1_000_000)
        results: list[int] = []
        iterator = self.sup.executors.map_in_processes(fw.square, range(first, first + count))
        try:
            await _collect(iterator, results)
        except WorkerCrashedError:
            self.ledger.expected_errors["WorkerCrashedError"] += 1
            return "counted" if _is_square_prefix(results, first) else "wrong"
        return "ok" if len(results) == count and _is_square_prefix(results, first) else "wrong"

    async def op_cleanup(self) -> str:
        """A cleanup request, normal or aggressive."""
        report = await self.sup.request_cleanup(aggressive=self.rng.random() < 0.3, reason="soak")
        for outcome in report.failures:
            self.ledger.faults[f"cleanup handler {outcome.status}"] += 1
        return (
            "ok"
            if any(o.name == "steady" and o.status == "ok" for o in report.outcomes)
            else "wrong"
        )

    async def op_session(self) -> str:
        """A session held briefly."""
        async with self.sup.sessions.session(f"soak-{self.item()}"):
            await anyio.sleep(self.rng.uniform(0.0, 0.02))
        return "ok"

    async def op_sample(self) -> str:
        """An explicit sample."""
        snapshot = await self.sup.update_metrics()
        return "ok" if snapshot["memory_limit_bytes"] > 0 else "wrong"

    # -- clients and background parts ---------------------------------------------
    async def client(self, stop_at: float) -> None:
        """Run random operations until *stop_at*, some under a random deadline."""
        operations: list[tuple[str, Callable[[], Awaitable[str]], float]] = [
            ("thread", self.op_thread, 30),
            ("process", self.op_process, 30),
            ("map", self.op_map, 8),
            ("cleanup", self.op_cleanup, 3),
            ("session", self.op_session, 10),
            ("sample", self.op_sample, 5),
        ]
        names = [name for name, _, _ in operations]
        funcs = {name: func for name, func, _ in operations}
        weights = [weight for _, _, weight in operations]
        while time.monotonic() < stop_at:
            name = self.rng.choices(names, weights)[0]
            self.ledger.submitted[name] += 1
            cancel_after = self.rng.uniform(0.0, 0.05) if self.rng.random() < 0.1 else None
            await self.account(name, funcs[name], cancel_after)

    async def account(
        self, name: str, func: Callable[[], Awaitable[str]], cancel_after: float | None
    ) -> None:
        """Run one operation and record how it ended."""
        ledger = self.ledger
        try:
            with anyio.fail_after(OP_GUARD_SECONDS):
                if cancel_after is None:
                    outcome = await func()
                else:
                    with anyio.move_on_after(cancel_after) as scope:
                        outcome = await func()
                    if scope.cancelled_caught:
                        ledger.faults["caller cancelled"] += 1
                        ledger.cancelled[name] += 1
                        return
        except TimeoutError:
            ledger.hung[name] += 1
            return
        except Exception as exc:  # noqa: BLE001 - every surprise is counted and reported
            ledger.unexpected_errors[f"{name}: {type(exc).__name__}: {exc}"[:200]] += 1
            return
        if outcome == "ok":
            ledger.ok[name] += 1
        elif outcome == "wrong":
            ledger.wrong_results[name] += 1
        # "counted": the operation recorded its expected error itself

    async def killer(self, stop_at: float) -> None:
        """SIGKILL a random worker every 0.5-3 s."""
        while time.monotonic() < stop_at:
            await anyio.sleep(self.rng.uniform(0.5, 3.0))
            pids = worker_pids()
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.ledger.faults["worker SIGKILL"] += 1

    async def reader(self) -> None:
        """A subscriber that reads every snapshot."""
        async with self.sup.subscribe(buffer=8) as stream:
            async for _ in stream:
                self.reader_received += 1

    async def never_reader(self, stop_at: float) -> None:
        """A subscriber that never reads: its buffer must stay at most 16."""
        async with self.sup.subscribe(buffer=16) as stream:
            while time.monotonic() < stop_at:
                self.never_read_max_buffered = max(self.never_read_max_buffered, stream.buffered)
                await anyio.sleep(1.0)

    async def rss_sampler(self, stop_at: float) -> None:
        """Sample this process's RSS every second."""
        process = psutil.Process()
        while time.monotonic() < stop_at:
            self.rss_samples.append(process.memory_info().rss)
            await anyio.sleep(1.0)

    def register_faulty_parts(self) -> None:
        """Cleanup handlers and providers, some of which raise or hang at random."""
        rng = random.Random(self.rng.random())
        ledger = self.ledger

        async def steady(request: CleanupRequest) -> None:
            await anyio.lowlevel.checkpoint()

        async def flaky(request: CleanupRequest) -> None:
            if rng.random() < 0.3:
                raise RuntimeError("flaky handler")

        async def sometimes_hangs(request: CleanupRequest) -> None:
            if rng.random() < 0.2:
                await anyio.sleep_forever()

        def provider_ok() -> Mapping[str, int]:
            return {"items": 1}

        def provider_flaky() -> Mapping[str, int]:
            if rng.random() < 0.3:
                ledger.faults["provider raised"] += 1
                raise OSError("backend unreachable")
            return {"items": 2}

        def provider_hangs() -> Mapping[str, int]:
            if rng.random() < 0.1:
                ledger.faults["provider hung"] += 1
                self.release_providers.wait(2.0)
            return {"items": 3}

        async def provider_async_hangs() -> Mapping[str, int]:
            if rng.random() < 0.1:
                ledger.faults["async provider hung"] += 1
                await anyio.sleep(2.0)
            return {"items": 4}

        self.sup.register_cleanup(steady, name="steady")
        self.sup.register_cleanup(flaky, name="flaky")
        self.sup.register_cleanup(sometimes_hangs, name="sometimes_hangs")
        self.sup.register_metrics_provider("ok", provider_ok)
        self.sup.register_metrics_provider("flaky", provider_flaky)
        self.sup.register_metrics_provider("hangs", provider_hangs)
        self.sup.register_metrics_provider("ahangs", provider_async_hangs)


async def _collect(iterator: AsyncIterator[int], into: list[int]) -> None:
    try:
        async for result in iterator:
            into.append(result)  # noqa: PERF401 - keep the results before an error
    finally:
        aclose: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _is_square_prefix(results: list[int], first: int) -> bool:
    return results == [item * item for item in range(first, first + len(results))]


async def run_load(minutes: float, seed: int) -> dict[str, object]:
    """Phase 1: mixed load with faults for *minutes*; return the figures."""
    rng = random.Random(seed)
    children_before = {child.pid for child in psutil.Process().children(recursive=True)}
    with tempfile.TemporaryDirectory(prefix="rs-soak-") as directory:
        started = time.monotonic()
        stop_at = started + minutes * 60.0
        async with Supervisor(soak_settings()) as sup:
            load = Load(sup, rng, directory)
            load.register_faulty_parts()
            last: MetricsSnapshot = sup.metrics
            gc.collect()
            objects = [len(gc.get_objects())]
            async with anyio.create_task_group() as tg:
                tg.start_soon(load.reader)
                async with anyio.create_task_group() as workers:
                    workers.start_soon(load.rss_sampler, stop_at)
                    workers.start_soon(load.never_reader, stop_at)
                    workers.start_soon(load.killer, stop_at)
                    for _ in range(CLIENTS):
                        workers.start_soon(load.client, stop_at)
                load.release_providers.set()
                last = await sup.update_metrics()
                idle = await _wait_idle(sup)
                tg.cancel_scope.cancel()
            gc.collect()
            objects.append(len(gc.get_objects()))
            load.rss_samples.append(psutil.Process().memory_info().rss)
        elapsed = time.monotonic() - started
        twice = [
            item for item in range(1, load.next_item + 1) if fw.executions(directory, item) > 1
        ]
        ok_not_once = [item for item in load.ok_items if fw.executions(directory, item) != 1]
    await anyio.sleep(0.5)
    children_after = {
        child.pid
        for child in psutil.Process().children(recursive=True)
        if child.status() != psutil.STATUS_ZOMBIE and not _is_resource_tracker(child)
    }
    ledger = load.ledger
    rss = load.rss_samples
    submitted = sum(ledger.submitted.values())
    return {
        "duration_seconds": round(elapsed, 1),
        "seed": seed,
        "clients": CLIENTS,
        "workers": WORKERS,
        "rss_bytes": {"start": rss[0], "end": rss[-1], "peak": max(rss)},
        "rss_growth_mib": round((rss[-1] - rss[0]) / MiB, 2),
        # Objects the garbage collector tracks (containers, not ints or strings): flat
        # when RSS growth comes from the allocator rather than from kept objects.
        "gc_tracked_objects": {"start": objects[0], "end": objects[-1]},
        "submitted": dict(ledger.submitted),
        "submitted_total": submitted,
        "accounted_total": ledger.accounted(),
        "lost_total": submitted - ledger.accounted(),
        "ok": dict(ledger.ok),
        "cancelled": dict(ledger.cancelled),
        "expected_errors": dict(ledger.expected_errors),
        "unexpected_errors": dict(ledger.unexpected_errors),
        "wrong_results": dict(ledger.wrong_results),
        "hung": dict(ledger.hung),
        "faults_injected": dict(ledger.faults),
        "process_calls_run_twice": len(twice),
        "process_calls_ok_not_run_exactly_once": len(ok_not_once),
        "never_reading_subscriber_max_buffered": load.never_read_max_buffered,
        "reading_subscriber_received": load.reader_received,
        "lanes_idle_at_end": idle,
        "final_metrics": {
            key: last[key]
            for key in (
                "process_crashed_total",
                "process_completed_total",
                "process_failed_total",
                "thread_lane_completed_total",
                "cleanup_runs_total",
                "cleanup_handler_failures_total",
                "cleanup_handler_timeouts_total",
                "provider_failures_total",
                "stream_dropped_total",
                "sessions_evicted_total",
                "active_sessions_rag",
            )
            if key in last
        },
        "child_processes_left": sorted(children_after - children_before),
    }


def _is_resource_tracker(process: psutil.Process) -> bool:
    """The interpreter-wide multiprocessing resource tracker, left running by design."""
    try:
        return any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False


async def _wait_idle(sup: Supervisor) -> bool:
    with anyio.move_on_after(30.0):
        while True:
            metrics = sup.executors.metrics()
            if (
                metrics["thread_lane_busy"] == 0
                and metrics["thread_lane_queued"] == 0
                and metrics.get("process_workers_busy", 0) == 0
                and metrics.get("process_queue_depth", 0) == 0
            ):
                return True
            await anyio.sleep(0.05)
    return False


# -- phase 2: lifecycle ----------------------------------------------------------------


def _census() -> dict[str, object]:
    return {
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "fds": len(os.listdir("/proc/self/fd")),
        "children": sorted(
            child.pid
            for child in psutil.Process().children(recursive=True)
            if child.status() != psutil.STATUS_ZOMBIE
        ),
    }


async def _cycle() -> None:
    settings = SupervisorSettings.model_validate(
        {
            "monitoring_interval": 0.001,
            "concurrency": {"default_cpu_workers": 1, "default_io_workers": 2},
        }
    )
    async with Supervisor(settings) as sup, sup.subscribe(buffer=4) as stream:
        await sup.executors.run_in_thread(sum, (1, 2, 3))
        await sup.update_metrics()
        await stream.receive()
        async with sup.sessions.session("cycle"):
            pass
        if await sup.executors.run_in_process(fw.square, 7) != 49:
            raise AssertionError("wrong result from the process lane")


async def _cycles(count: int) -> dict[str, object]:
    tasks_before = len(asyncio.all_tasks())
    fds_before = len(os.listdir("/proc/self/fd"))
    started = time.perf_counter()
    for _ in range(count):
        await _cycle()
    elapsed = time.perf_counter() - started
    return {
        "tasks_before": tasks_before,
        "tasks_after": len(asyncio.all_tasks()),
        "fds_before_in_loop": fds_before,
        "fds_after_in_loop": len(os.listdir("/proc/self/fd")),
        "ms_per_cycle": round(elapsed / max(count, 1) * 1000, 1),
    }


def run_cycles(count: int) -> dict[str, object]:
    """Phase 2: *count* enter/exit cycles with the process lane; return the census."""
    anyio.run(_cycle)  # warm-up: the interpreter-wide resource tracker starts here
    time.sleep(0.5)
    before = _census()
    inside = anyio.run(_cycles, count)
    deadline = time.monotonic() + 15.0
    after = _census()
    while after != before and time.monotonic() < deadline:
        time.sleep(0.1)
        after = _census()
    return {
        "cycles": count,
        **inside,
        "before": before,
        "after": after,
        "leaked": after != before or inside["tasks_after"] != inside["tasks_before"],
    }


# -- phase 3: faults across processes ---------------------------------------------------

_ROOT = Path(__file__).resolve().parent.parent


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE and not _is_resource_tracker(process)
    except psutil.NoSuchProcess:
        return False


def _service_kill(start_method: str) -> dict[str, object]:
    """SIGKILL one busy service; how long until its processes were gone, what was left."""
    import subprocess
    import sys

    with tempfile.TemporaryDirectory(prefix="rs-soak-kill-") as tmp:
        env = {**os.environ, "TMPDIR": tmp, "PYTHONPATH": str(_ROOT)}
        with subprocess.Popen(
            [sys.executable, "-m", "tests._orphan_service", start_method],
            cwd=_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        ) as service:
            assert service.stdout is not None
            ready = json.loads(service.stdout.readline() or "{}").get("ready", False)
            started = psutil.Process(service.pid).children(recursive=True)
            killed_at = time.monotonic()
            service.kill()
            service.wait()
            left = [p for p in started if _alive(p)]
            while left and time.monotonic() - killed_at < 3.0:
                time.sleep(0.02)
                left = [p for p in left if _alive(p)]
            gone_after = time.monotonic() - killed_at
            for process in left:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        spills = [name for name in os.listdir(tmp) if name.startswith("resource-supervisor-call-")]
    return {
        "ready": ready,
        "processes": len(started),
        "left": len(left),
        "gone_after_seconds": round(gone_after, 3),
        "spill_files_left": len(spills),
    }


def _worker_oom() -> dict[str, object]:
    """One run of the OOM service in a fresh 300 MiB memory cgroup."""
    import subprocess
    import sys

    from resource_supervisor.testing import memory_cgroup

    with memory_cgroup(300 * MiB, prefix="rs-soak") as cgroup:
        env = {**os.environ, "PYTHONPATH": str(_ROOT), "MALLOC_MMAP_THRESHOLD_": str(MiB)}
        with subprocess.Popen(
            [sys.executable, "-m", "tests._oom_service"],
            cwd=_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        ) as service:
            cgroup.add(service.pid)
            stdout, _ = service.communicate(b"go\n", timeout=120)
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    outcome = lines[0] if lines else {}
    return {
        "service_exit": service.returncode,
        "outcome": outcome.get("outcome"),
        "reason": outcome.get("reason"),
        "answered_after": bool(lines) and lines[-1].get("done") is True,
    }


def run_process_faults(service_kills: int, worker_ooms: int) -> dict[str, object]:
    """Phase 3: SIGKILLed services and OOM-growing workers; return the figures."""
    from resource_supervisor.testing import CgroupUnavailableError

    kills = [_service_kill("forkserver" if i % 2 == 0 else "spawn") for i in range(service_kills)]
    ooms: list[dict[str, object]] = []
    skipped = ""
    try:
        ooms = [_worker_oom() for _ in range(worker_ooms)]
    except CgroupUnavailableError as exc:
        skipped = str(exc)
    return {
        "service_kills": kills,
        "service_kills_failed": sum(
            1 for k in kills if not k["ready"] or k["left"] or k["spill_files_left"]
        ),
        "worker_ooms": ooms,
        "worker_ooms_failed": sum(
            1
            for o in ooms
            if o["service_exit"] != 0
            or o["reason"] not in {"oom_kill", "memory_pressure"}
            or not o["answered_after"]
        ),
        "worker_ooms_skipped": skipped,
    }


# -- entry point -------------------------------------------------------------------------


def summarize(result: Mapping[str, object]) -> str:
    """A short human-readable summary of a soak result."""
    load = result["load"]
    cycles = result["lifecycle"]
    assert isinstance(load, dict)
    assert isinstance(cycles, dict)
    rss = load["rss_bytes"]
    assert isinstance(rss, dict)
    lines = [
        f"soak: {load['duration_seconds']} s of mixed load, seed {load['seed']}",
        f"  RSS MiB start/end/peak: {rss['start'] / MiB:.1f} / {rss['end'] / MiB:.1f} / "
        f"{rss['peak'] / MiB:.1f} (growth {load['rss_growth_mib']} MiB; gc-tracked objects "
        f"{load['gc_tracked_objects']['start']} -> {load['gc_tracked_objects']['end']})",
        f"  operations submitted {load['submitted_total']}, accounted {load['accounted_total']}, "
        f"lost {load['lost_total']}",
        f"  ok {load['ok']}",
        f"  cancelled {load['cancelled']}",
        f"  expected errors {load['expected_errors']}",
        f"  unexpected errors {load['unexpected_errors']}",
        f"  wrong results {load['wrong_results']}, hung {load['hung']}",
        f"  faults injected {load['faults_injected']}",
        f"  process calls run twice {load['process_calls_run_twice']}, "
        f"ok calls not run exactly once {load['process_calls_ok_not_run_exactly_once']}",
        f"  never-reading subscriber max buffered {load['never_reading_subscriber_max_buffered']}",
        f"  lanes idle at end {load['lanes_idle_at_end']}, "
        f"child processes left {load['child_processes_left']}",
        f"lifecycle: {cycles['cycles']} cycles with the process lane, "
        f"{cycles['ms_per_cycle']} ms each, leaked: {cycles['leaked']}",
        f"library log records (warning and above): {result['library_log_records']}",
    ]
    faults = result.get("process_faults")
    if isinstance(faults, dict):
        kills = faults["service_kills"]
        slowest = max((k["gone_after_seconds"] for k in kills), default=0.0)
        lines.append(
            f"service SIGKILLs: {len(kills)}, failed {faults['service_kills_failed']} "
            f"(slowest until every process was gone: {slowest} s)"
        )
        ooms = faults["worker_ooms"]
        reasons = collections.Counter(str(o["reason"]) for o in ooms)
        lines.append(
            f"worker OOMs in a 300 MiB cgroup: {len(ooms)}, failed {faults['worker_ooms_failed']}"
            f", reasons {dict(reasons)} {faults['worker_ooms_skipped']}".rstrip()
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return 1 when work was lost, duplicated or leaked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="mixed-load duration")
    parser.add_argument("--cycles", type=int, default=1000, help="lifecycle cycles")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--service-kills", type=int, default=10, help="services SIGKILLed")
    parser.add_argument("--worker-ooms", type=int, default=4, help="worker OOM runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    with LogCounter().installed() as load_logs:
        load = anyio.run(functools.partial(run_load, args.minutes, seed))
    with LogCounter().installed() as cycle_logs:
        lifecycle = run_cycles(args.cycles)
    process_faults = run_process_faults(args.service_kills, args.worker_ooms)
    result: dict[str, object] = {
        "timestamp": stamp,
        "cpus": os.cpu_count(),
        "load": load,
        "lifecycle": lifecycle,
        "process_faults": process_faults,
        "library_log_records": {
            "load": dict(load_logs.counts),
            "lifecycle": dict(cycle_logs.counts),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(summarize(result))
    print(f"written to {path}")
    failed = (
        load["lost_total"] != 0
        or load["process_calls_run_twice"] != 0
        or load["process_calls_ok_not_run_exactly_once"] != 0
        or load["wrong_results"]
        or load["hung"]
        or load["unexpected_errors"]
        or lifecycle["leaked"]
        or process_faults["service_kills_failed"]
        or process_faults["worker_ooms_failed"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
