"""Tests for the Sampler: core metrics from real and fixture trees, providers, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import psutil
import pytest

from resource_supervisor._metric_keys import SAMPLER_KEYS
from resource_supervisor._sampler import Sampler, SamplerStatistics
from resource_supervisor.testing import ManualClock

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

FIXTURES = Path(__file__).parent / "fixtures"
PID = 4242
MIB = 1024 * 1024
GIB = 1024 * MIB
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
LOGGER = "resource_supervisor.sampler"
HAVE_PSI = os.path.exists("/proc/pressure/memory")


def tree(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    """Build a proc tree (this machine's files) with a cgroup layout; return both roots."""
    proc = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc", proc)
    base = FIXTURES / "cgroup" / layout
    shutil.copy(base / "proc" / str(PID) / "cgroup", proc / str(PID) / "cgroup")
    cgroup = tmp_path / "cgroup"
    shutil.copytree(base / "sys/fs/cgroup", cgroup)
    return proc, cgroup


def rewrite(path: Path, text: str) -> None:
    """Rewrite a file in place (same inode), as the kernel's files change."""
    with open(path, "r+") as file:
        file.write(text)
        file.truncate()


def meminfo_bytes(proc: Path, key: str) -> int:
    """A meminfo figure in bytes."""
    for line in (proc / "meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


def fd_count() -> int:
    """Open fds of this process."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def sampler() -> Iterator[Sampler]:
    """A sampler of this process on the real files, with a short provider timeout."""
    with Sampler(provider_timeout=0.2) as opened:
        yield opened


# -- core metrics ----------------------------------------------------------------------


async def test_real_sample_has_core_keys_and_agrees_with_psutil() -> None:
    """On the real /proc: every core key, RSS within 10%, threads exact, memory near psutil."""
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with Sampler() as sampler:
            data = await sampler.sample()
            threads = psutil.Process().num_threads()
            fds = psutil.Process().num_fds()
    finally:
        release.set()
        worker.join()
    assert data.keys() >= SAMPLER_KEYS
    assert data["process_rss_bytes"] == pytest.approx(psutil.Process().memory_info().rss, rel=0.1)
    assert data["process_threads"] == threads
    assert abs(int(data["process_fds"]) - fds) <= 2
    vm = psutil.virtual_memory()
    assert data["system_memory_percent"] == pytest.approx(vm.percent, abs=5.0)
    assert data["host_memory_total_bytes"] == vm.total
    assert 0 < int(data["memory_used_bytes"]) <= int(data["memory_limit_bytes"])
    assert int(data["memory_limit_bytes"]) <= vm.total
    assert data["memory_percent"] == pytest.approx(
        int(data["memory_used_bytes"]) / int(data["memory_limit_bytes"]) * 100
    )
    if data["memory_limit_source"] == "host":
        assert data["memory_limit_bytes"] == vm.total
        assert "cgroup_memory_limit_bytes" not in data
    else:
        assert data["cgroup_memory_limit_bytes"] == data["memory_limit_bytes"]
    assert ("psi_memory_some_avg10" in data) == HAVE_PSI
    assert ("psi_memory_full_avg10" in data) == HAVE_PSI


async def test_real_cpu_percentages_are_measured_between_samples() -> None:
    """CPU burnt between two samples shows as process CPU; system CPU stays in 0-100."""
    with Sampler() as sampler:
        await sampler.sample()
        start = time.process_time()
        while time.process_time() - start < 0.2:
            pass
        data = await sampler.sample()
    assert float(data["process_cpu_percent"]) > 0.0
    assert 0.0 < float(data["system_cpu_percent"]) <= 100.0


async def test_v2_fixture_sample(tmp_path: Path) -> None:
    """cgroup v2: limit 512 MiB, working set 256 - 64 MiB, PSI from the service's cgroup."""
    proc, cgroup = tree(tmp_path, "v2")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        data = await sampler.sample()
    assert data["memory_limit_source"] == "cgroup_v2"
    assert data["memory_limit_bytes"] == 512 * MIB
    assert data["cgroup_memory_limit_bytes"] == 512 * MIB
    assert data["memory_used_bytes"] == 192 * MIB
    assert data["memory_percent"] == pytest.approx(37.5)
    assert data["psi_memory_some_avg10"] == 1.5
    assert data["psi_memory_full_avg10"] == 0.25
    assert data["host_memory_total_bytes"] == meminfo_bytes(proc, "MemTotal")
    statm = (proc / str(PID) / "statm").read_text().split()
    assert data["process_rss_bytes"] == int(statm[1]) * PAGE_SIZE
    assert data["process_threads"] == 2
    assert data["process_fds"] == 4


async def test_v1_fixture_sample(tmp_path: Path) -> None:
    """cgroup v1: the parent's 2 GiB limit applies; used = usage - total_inactive_file."""
    proc, cgroup = tree(tmp_path, "v1")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        data = await sampler.sample()
        assert sampler.read_memory() == (768 * MIB, 2 * GIB)
    assert data["memory_limit_source"] == "cgroup_v1"
    assert (data["memory_used_bytes"], data["memory_limit_bytes"]) == (768 * MIB, 2 * GIB)


async def test_unlimited_fixture_uses_host_figures(tmp_path: Path) -> None:
    """No cgroup limit: used = MemTotal - MemAvailable of MemTotal, source host, no cgroup key."""
    proc, cgroup = tree(tmp_path, "unlimited")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        data = await sampler.sample()
    total = meminfo_bytes(proc, "MemTotal")
    assert data["memory_limit_source"] == "host"
    assert data["memory_limit_bytes"] == total
    assert data["memory_used_bytes"] == total - meminfo_bytes(proc, "MemAvailable")
    assert "cgroup_memory_limit_bytes" not in data
    assert data["memory_percent"] == pytest.approx(data["system_memory_percent"])


async def test_limit_change_between_samples_is_seen(tmp_path: Path) -> None:
    """The limit is re-read each sample: raise it, then lift it (back to host figures)."""
    proc, cgroup = tree(tmp_path, "v2")
    limit_file = cgroup / "system.slice/app.service/memory.max"
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        first = await sampler.sample()
        rewrite(limit_file, "1073741824\n")
        second = await sampler.sample()
        rewrite(limit_file, "max\n")
        third = await sampler.sample()
    assert first["memory_limit_bytes"] == 512 * MIB
    assert second["memory_limit_bytes"] == GIB
    assert second["memory_percent"] == pytest.approx(192 / 1024 * 100)
    assert third["memory_limit_source"] == "host"
    assert "cgroup_memory_limit_bytes" not in third


async def test_broken_cgroup_files_fall_back_to_host(tmp_path: Path) -> None:
    """Missing or garbled cgroup files never raise out of a sample: host figures are used."""
    proc, cgroup = tree(tmp_path, "v2")
    service = cgroup / "system.slice/app.service"
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        rewrite(service / "memory.max", "not a number\n")
        garbled = await sampler.sample()
        rewrite(service / "memory.max", "536870912\n")
        rewrite(service / "memory.current", "???\n")
        bad_usage = await sampler.sample()
    (service / "memory.current").unlink()
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        missing = await sampler.sample()
    for data in (garbled, bad_usage, missing):
        assert data["memory_limit_source"] == "host"
        assert data["memory_limit_bytes"] == meminfo_bytes(proc, "MemTotal")


async def test_missing_proc_files_still_give_a_sample(tmp_path: Path) -> None:
    """A pid with no files under an existing /proc root gives zeros, not an exception."""
    proc, cgroup = tree(tmp_path, "unlimited")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=999_999_999) as sampler:
        data = await sampler.sample()
    assert data.keys() >= SAMPLER_KEYS
    assert (data["process_rss_bytes"], data["process_threads"], data["process_fds"]) == (0, 0, 0)
    assert data["memory_limit_source"] == "host"


async def test_garbled_proc_files_never_raise_out_of_a_sample(tmp_path: Path) -> None:
    """Unparsable meminfo, stat and PSI: host figures from psutil, 0 % CPU, no PSI keys."""
    proc, cgroup = tree(tmp_path, "unlimited")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        assert "psi_memory_some_avg10" in await sampler.sample()
        for name in ("meminfo", "stat", "pressure/memory"):
            rewrite(proc / name, "garbage\n")
        data = await sampler.sample()
    assert data["host_memory_total_bytes"] == psutil.virtual_memory().total
    assert data["memory_limit_source"] == "host"
    assert data["system_cpu_percent"] == 0.0
    assert "psi_memory_some_avg10" not in data


async def test_psi_keys_absent_without_psi(tmp_path: Path) -> None:
    """Without any PSI file, the PSI keys are left out rather than zero."""
    proc, cgroup = tree(tmp_path, "unlimited")
    shutil.rmtree(proc / "pressure")
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID) as sampler:
        data = await sampler.sample()
    assert "psi_memory_some_avg10" not in data
    assert "psi_memory_full_avg10" not in data


async def test_system_cpu_percent_from_stat_deltas(tmp_path: Path) -> None:
    """System CPU is busy ticks over total ticks between two samples (iowait is idle)."""
    proc, cgroup = tree(tmp_path, "unlimited")
    stat = proc / "stat"
    rewrite(stat, "cpu  100 0 100 800 0 0 0 0 0 0\n")
    clock = ManualClock()
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID, clock=clock) as sampler:
        clock.advance(1.0)
        first = await sampler.sample()
        rewrite(stat, "cpu  150 0 150 850 50 0 0 0 0 0\n")
        clock.advance(1.0)
        second = await sampler.sample()
        clock.advance(1.0)
        third = await sampler.sample()
    assert first["system_cpu_percent"] == 0.0
    assert second["system_cpu_percent"] == pytest.approx(50.0)
    assert third["system_cpu_percent"] == 0.0


async def test_cpu_figures_need_a_minimum_window(tmp_path: Path) -> None:
    """A sample within 0.1 s of the baseline repeats the previous CPU figures and keeps
    the baseline: one 10 ms jiffy over a microsecond window is not 100 % CPU."""
    proc, cgroup = tree(tmp_path, "unlimited")
    stat = proc / "stat"
    rewrite(stat, "cpu  100 0 100 800 0 0 0 0 0 0\n")
    clock = ManualClock()
    with Sampler(proc_root=str(proc), cgroup_root=str(cgroup), pid=PID, clock=clock) as sampler:
        rewrite(stat, "cpu  101 0 100 800 0 0 0 0 0 0\n")  # one busy tick, no idle tick
        clock.advance(0.001)
        early = await sampler.sample()
        rewrite(stat, "cpu  120 0 100 880 0 0 0 0 0 0\n")
        clock.advance(0.5)
        later = await sampler.sample()  # measured from the open() baseline
        clock.advance(0.01)
        repeat = await sampler.sample()
    assert early["system_cpu_percent"] == 0.0
    assert later["system_cpu_percent"] == pytest.approx(20.0)
    assert repeat["system_cpu_percent"] == pytest.approx(20.0)


async def test_wall_clock_stamps_the_sample() -> None:
    """last_metrics_update_ts comes from the injected wall clock."""
    with Sampler(wall_clock=lambda: 1234.5) as clocked:
        data = await clocked.sample()
    assert data["last_metrics_update_ts"] == 1234.5


async def test_read_memory_agrees_with_sample(sampler: Sampler) -> None:
    """read_memory() gives the same limit as a sample and a close working-set figure."""
    data = await sampler.sample()
    used, limit = sampler.read_memory()
    assert limit == data["memory_limit_bytes"]
    assert used == pytest.approx(int(data["memory_used_bytes"]), rel=0.2)


# -- lifecycle -------------------------------------------------------------------------


async def test_open_close_leak_no_fd_and_close_is_idempotent() -> None:
    """open() keeps fds open, close() releases all; both are idempotent; reopen works."""
    before = fd_count()
    sampler = Sampler()
    sampler.open()
    opened = fd_count()
    sampler.open()
    assert fd_count() == opened > before
    await sampler.sample()
    sampler.close()
    sampler.close()
    assert fd_count() == before
    with pytest.raises(RuntimeError, match="not open"):
        await sampler.sample()
    with pytest.raises(RuntimeError, match="not open"):
        sampler.read_memory()
    sampler.open()
    assert "memory_percent" in await sampler.sample()
    sampler.close()
    assert fd_count() == before


def test_bad_provider_timeout_is_rejected() -> None:
    """A non-positive provider timeout is a ValueError naming it."""
    with pytest.raises(ValueError, match="provider_timeout"):
        Sampler(provider_timeout=0)


async def test_statistics_count_samples_and_failures(sampler: Sampler) -> None:
    """statistics() counts samples, provider failures and the last sample's duration."""
    assert sampler.statistics() == SamplerStatistics(0, 0, 0.0)

    def broken() -> Mapping[str, float]:
        raise RuntimeError("boom")

    sampler.register_provider("broken", broken)
    await sampler.sample()
    data = await sampler.sample()
    stats = sampler.statistics()
    assert (stats.samples, stats.provider_failures) == (2, 2)
    assert stats.sample_seconds_last > 0
    assert data["provider_failures_total"] == 2
    assert float(data["sample_duration_seconds"]) > 0


# -- providers ---------------------------------------------------------------------------


async def test_provider_metrics_are_namespaced(sampler: Sampler) -> None:
    """Sync and async providers' keys appear as <provider>_<key>."""

    async def rag() -> Mapping[str, float | int]:
        return {"queue_depth": 3, "hit_ratio": 0.5}

    sampler.register_provider("rag", rag)
    sampler.register_provider("cache", lambda: {"entries": 7})
    data = await sampler.sample()
    assert (data["rag_queue_depth"], data["rag_hit_ratio"], data["cache_entries"]) == (3, 0.5, 7)
    assert data["provider_failures_total"] == 0
    sampler.unregister_provider("cache")
    data = await sampler.sample()
    assert "cache_entries" not in data
    assert data["rag_queue_depth"] == 3


async def test_async_callable_object_is_awaited(sampler: Sampler) -> None:
    """An object with an async __call__ is treated as an async provider."""

    class Provider:
        async def __call__(self) -> Mapping[str, int]:
            return {"n": 1}

    sampler.register_provider("obj", Provider())
    assert (await sampler.sample())["obj_n"] == 1


async def test_sync_provider_returning_an_awaitable_is_awaited(sampler: Sampler) -> None:
    """A plain callable that returns a coroutine (e.g. a lambda) still yields its metrics."""

    async def produce() -> Mapping[str, int]:
        return {"n": 5}

    sampler.register_provider("lazy", lambda: produce())
    assert (await sampler.sample())["lazy_n"] == 5


async def test_providers_run_concurrently(sampler: Sampler) -> None:
    """Two providers that each wait for the other can only finish if they run together."""
    first, second = anyio.Event(), anyio.Event()

    async def one() -> Mapping[str, int]:
        first.set()
        await second.wait()
        return {"v": 1}

    async def two() -> Mapping[str, int]:
        second.set()
        await first.wait()
        return {"v": 2}

    sampler.register_provider("one", one)
    sampler.register_provider("two", two)
    with anyio.fail_after(5):
        data = await sampler.sample()
    assert (data["one_v"], data["two_v"]) == (1, 2)


async def test_raising_provider_is_skipped_and_counted(sampler: Sampler) -> None:
    """A provider that raises is left out; other providers and core metrics still arrive."""

    def broken() -> Mapping[str, int]:
        raise RuntimeError("boom")

    sampler.register_provider("broken", broken)
    sampler.register_provider("good", lambda: {"x": 1})
    data = await sampler.sample()
    assert data["good_x"] == 1
    assert not any(key.startswith("broken_") for key in data)
    assert data["provider_failures_total"] == 1
    assert "memory_percent" in data


async def test_hanging_async_provider_times_out(sampler: Sampler) -> None:
    """An async provider that never returns is cancelled at the timeout; the sample completes."""
    cancelled = threading.Event()

    async def hang() -> Mapping[str, int]:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    sampler.register_provider("hang", hang)
    sampler.register_provider("good", lambda: {"x": 1})
    with anyio.fail_after(10):
        data = await sampler.sample()
    assert cancelled.is_set()
    assert data["good_x"] == 1
    assert data["provider_failures_total"] == 1


async def test_hanging_sync_provider_times_out_without_piling_up_threads(
    sampler: Sampler,
) -> None:
    """A blocked sync provider fails at the timeout and is not called again while blocked."""
    release = threading.Event()
    done = threading.Event()
    calls = 0

    def hang() -> Mapping[str, int]:
        nonlocal calls
        calls += 1
        release.wait()
        done.set()
        return {"x": 1}

    sampler.register_provider("hang", hang)
    try:
        with anyio.fail_after(10):
            first = await sampler.sample()
            second = await sampler.sample()
        assert calls == 1
        assert first["provider_failures_total"] == 1
        assert second["provider_failures_total"] == 2
    finally:
        release.set()
        done.wait(10)
    # Its thread has returned, so the provider is called again and recovers.
    with anyio.fail_after(10):
        # done is set just before the thread's last step, so poll for that step.
        while "hang_x" not in (data := await sampler.sample()):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert data["hang_x"] == 1
    assert calls == 2


async def test_a_result_that_is_no_mapping_is_a_provider_failure(sampler: Sampler) -> None:
    """A provider returning something other than a mapping counts as a failure."""
    sampler.register_provider("rag", lambda: [("x", 1)])  # type: ignore[arg-type, return-value]
    data = await sampler.sample()
    assert data["provider_failures_total"] == 1
    assert data["provider_metrics_dropped_total"] == 0
    assert not any(key.startswith("rag_") for key in data)


@pytest.mark.parametrize(
    "bad",
    [
        {"x": "1"},
        {"x": True},
        {"x": None},
        {"bad key": 1},
        {1: 1},
        {"x": float("inf")},
        {"x": float("nan")},
        {"x": 10**400},
    ],
    ids=["str", "bool", "none", "bad-key", "int-key", "inf", "nan", "10**400"],
)
async def test_unusable_metrics_are_dropped_and_counted_the_rest_kept(
    sampler: Sampler, bad: dict[object, object]
) -> None:
    """
    A metric that is not a finite number fitting a float, or has a bad name, is left
    out and counted in provider_metrics_dropped_total; the provider's other metrics
    are kept and it is no failure.
    """
    result = {"good": 2.5, **bad}
    sampler.register_provider("rag", lambda: result)  # type: ignore[arg-type, return-value]
    data: dict[str, object] = {}
    for expected in (1, 2):
        data = dict(await sampler.sample())
        assert data["rag_good"] == 2.5
        assert data["provider_metrics_dropped_total"] == expected
        assert data["provider_failures_total"] == 0
        assert sampler.statistics().metrics_dropped == expected
    assert [key for key in data if key.startswith("rag_")] == ["rag_good"]


async def test_a_provider_keeps_at_most_its_key_budget(sampler: Sampler) -> None:
    """
    Of a million keys, the first 256 are kept and the rest counted as dropped, without
    the sample walking them all (liveness guard: it answers within 5 s).
    """
    from resource_supervisor._provider_output import MAX_PROVIDER_METRICS

    huge = {f"k{i}": i for i in range(1_000_000)}
    sampler.register_provider("rag", lambda: huge)
    with anyio.fail_after(5):
        data = await sampler.sample()
    kept = [key for key in data if key.startswith("rag_")]
    assert len(kept) == MAX_PROVIDER_METRICS
    assert data["provider_metrics_dropped_total"] == 1_000_000 - MAX_PROVIDER_METRICS


@pytest.mark.parametrize(
    "name", ["cleanup", "memory", "process", "process_extra", "gpu", "gpu0", "admission"]
)
def test_provider_names_of_builtin_namespaces_are_refused(sampler: Sampler, name: str) -> None:
    """A provider named after a built-in namespace is refused at registration."""
    with pytest.raises(ValueError, match="built-in metrics live under"):
        sampler.register_provider(name, dict)


async def test_failure_logged_once_per_streak(
    sampler: Sampler, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning when a failure streak starts, an info when it recovers, nothing in between."""
    failing = True

    def flaky() -> Mapping[str, int]:
        if failing:
            raise RuntimeError("flaky failure")
        return {"x": 1}

    sampler.register_provider("flaky", flaky)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            await sampler.sample()
        failing = False
        await sampler.sample()
        await sampler.sample()
        failing = True
        await sampler.sample()
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO, logging.WARNING]
    assert "'flaky'" in records[0][1]
    assert "flaky failure" in records[0][1]
    assert "3 failed samples" in records[1][1]
    assert sampler.statistics().provider_failures == 4


async def test_cancelled_sample_counts_nothing(sampler: Sampler) -> None:
    """Cancelling sample() while a provider blocks raises the cancellation and counts nothing."""
    entered = anyio.Event()

    async def blocked() -> Mapping[str, int]:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    slow = Sampler(provider_timeout=30)
    slow.open()
    try:
        slow.register_provider("blocked", blocked)
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow.sample)
            await entered.wait()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert slow.statistics() == SamplerStatistics(0, 0, 0.0)
    finally:
        slow.close()


def test_register_validates_names(sampler: Sampler) -> None:
    """Names must be [a-z][a-z0-9_]* and unique; the error names the offender."""
    sampler.register_provider("rag_1", dict)
    for bad in ("", "Rag", "1rag", "rag-x", "rag x"):
        with pytest.raises(ValueError, match="provider name"):
            sampler.register_provider(bad, dict)
    with pytest.raises(ValueError, match="'rag_1'"):
        sampler.register_provider("rag_1", dict)
    with pytest.raises(TypeError, match="callable"):
        sampler.register_provider("x", 42)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="nope"):
        sampler.unregister_provider("nope")


# -- providers raising anything ---------------------------------------------------------

_BASE_EXCEPTIONS = [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]


@pytest.mark.parametrize("exc_type", _BASE_EXCEPTIONS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_provider_raising_any_base_exception_is_counted_and_isolated(
    sampler: Sampler, exc_type: type[BaseException], kind: str
) -> None:
    """
    A provider raising KeyboardInterrupt, SystemExit, GeneratorExit or CancelledError
    (sync in its thread, or async) is left out and counted on every sample; the other
    providers still report and the sampling task is not cancelled.
    """

    def sync_bad() -> dict[str, float]:
        raise exc_type("bad")

    async def async_bad() -> dict[str, float]:
        await anyio.lowlevel.checkpoint()
        raise exc_type("bad")

    async def good() -> dict[str, float]:
        await anyio.sleep(0.01)
        return {"value": 1.0}

    sampler.register_provider("bad", sync_bad if kind == "sync" else async_bad)
    sampler.register_provider("good", good)
    for expected in (1, 2):
        with anyio.fail_after(5):
            data = await sampler.sample()
        assert data["good_value"] == 1.0
        assert data["provider_failures_total"] == expected
        await anyio.lowlevel.checkpoint()  # no cancellation left pending on this task


async def test_provider_cancelling_its_own_task_is_counted(sampler: Sampler) -> None:
    """A provider that cancels its own task is a counted failure, not a cancelled sample."""

    async def self_cancelling() -> dict[str, float]:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await anyio.sleep(5)
        return {}

    sampler.register_provider("selfish", self_cancelling)
    with anyio.fail_after(5):
        data = await sampler.sample()
    assert data["provider_failures_total"] == 1


async def test_cancelling_a_sample_is_not_counted_as_provider_failure(sampler: Sampler) -> None:
    """A real cancellation of the sample still propagates, and is no provider failure."""
    started = anyio.Event()

    async def slow() -> dict[str, float]:
        started.set()
        await anyio.sleep(5)
        return {}

    sampler.register_provider("slow", slow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.sample)
        await started.wait()
        tg.cancel_scope.cancel()
    assert sampler.statistics().provider_failures == 0
