"""
Tests of the survival suite's parts: the reading of a run, the cgroup runner on a
real memory cgroup, and the figures it writes (behaviour only, never speed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest
from PIL import Image

from benchmarks._harness import (
    Panel,
    SuiteResult,
    Target,
    Timeline,
    Track,
    compare,
    sequential_case,
)
from benchmarks._plots import DPI, wrap
from benchmarks._report import write_run
from benchmarks._survival_runs import ChildRun, MiB, outcome, run_in_cgroup
from benchmarks.survival import _supervision
from resource_supervisor.testing import CgroupUnavailableError, memory_cgroup

if TYPE_CHECKING:
    from pathlib import Path


def _run(returncode: int, *lines: dict[str, Any], oom: int = 0) -> ChildRun:
    return ChildRun(returncode, lines, "", oom, 200 * MiB, 400 * MiB)


def test_a_killed_service_loses_every_planned_call() -> None:
    """No done line (the kernel killed the service): not survived, every call lost."""
    result = outcome(_run(-9, {"kind": "series"}, oom=1), planned_calls=40)
    assert not result.survived
    assert result.lost == 40
    assert result.oom_kills == 1
    assert result.peak_percent == 50.0


def test_a_finished_run_counts_calls_and_reaction() -> None:
    """Completed, shed and lost come from the done line; unanswered calls count as lost."""
    done = {
        "done": True,
        "completed": 30,
        "lost": 2,
        "shed": 5,
        "wall": 2.0,
        "crossed_at": 10.0,
        "first_handler_at": 10.004,
    }
    result = outcome(_run(0, done), planned_calls=40)
    assert result.survived
    assert (result.completed, result.shed, result.lost) == (30, 5, 5)
    assert result.calls_per_second == 15.0
    assert result.reaction_ms == pytest.approx(4.0)
    assert not outcome(_run(1, done)).survived  # a service that exits badly did not survive


def test_wrap_keeps_every_word_of_a_long_label() -> None:
    """Labels are wrapped on word boundaries, never cut."""
    label = "adaptive process lane (max 4), scripted pressure NORMAL -> CRITICAL -> NORMAL"
    wrapped = wrap(label)
    assert wrapped.split() == label.split()
    assert max(len(line) for line in wrapped.splitlines()) <= 40


async def test_report_has_a_summary_timelines_and_150_dpi_figures(tmp_path: Path) -> None:
    """
    write_run draws the summary figure (referenced at the top of the report), the
    suite's bars and each timeline, all at DPI (150).
    """

    async def nothing() -> None:
        return None

    result = SuiteResult("demo")
    result.comparisons.append(
        await compare(
            "a comparison with a long title stating the workload",
            [
                sequential_case(
                    "a case with a rather long name that used to be cut off", nothing, 5
                ),
                sequential_case("second", nothing, 5),
            ],
            rounds=2,
            unit="us/call",
            targets=[
                Target(
                    "second <= 1000x first",
                    "second",
                    "a case with a rather long name that used to be cut off",
                    max_ratio=1000.0,
                )
            ],
        )
    )
    t = (0.0, 1.0, 2.0)
    result.timelines.append(
        Timeline(
            "memory of a run",
            (
                Panel(
                    "memory (MiB)",
                    (Track("usage", t, (1.0, 5.0, 2.0)),),
                    references=(("limit", 6.0),),
                ),
                Panel(
                    "level",
                    (Track("level", t, (0.0, 2.0, 0.0), step=True),),
                    y_ticks=((0.0, "NORMAL"), (2.0, "CRITICAL")),
                ),
            ),
            events=((1.5, "aggressive cleanup, 3 MiB freed"),),
        )
    )

    def write_and_check() -> None:  # files: written and read off the event loop
        write_run([result], {"started": "now", "mode": "quick"}, tmp_path, None)
        report = (tmp_path / "report.md").read_text()
        assert report.index("summary.png") < report.index("## Targets")
        assert "demo-timeline-1.png" in report
        for name in ("summary.png", "demo.png", "demo-timeline-1.png"):
            with Image.open(tmp_path / name) as image:
                dpi = image.info["dpi"]
            assert round(dpi[0]) == DPI, name

    await anyio.to_thread.run_sync(write_and_check)


@pytest.mark.cgroup
@pytest.mark.timeout(90)
def test_a_fast_ramp_polled_every_30_s_is_oom_killed_in_its_cgroup() -> None:
    """
    The runner on a real cgroup: a cache growing at 1000 MiB/s with the default 30 s
    interval and kernel notifications off dies by the OOM killer; the run says so
    (not survived, oom_kills >= 1, peak at the limit) and the cgroup is gone after.
    """
    try:
        with memory_cgroup(64 * MiB, prefix="rs-test-probe"):
            pass
    except CgroupUnavailableError as exc:
        pytest.skip(str(exc))
    limit = 200 * MiB
    config = {
        "scenario": "ramp",
        "rate_mib_s": 1000,
        "step_mib": 8,
        "total_mib": 600,
        **_supervision(30.0, limit),
        "notifications": False,
    }
    run = run_in_cgroup(config, limit, timeout=60)
    result = outcome(run)
    assert not result.survived, run.stderr[-2000:]
    assert result.oom_kills >= 1
    assert result.peak_percent is not None
    assert result.peak_percent >= 95.0
    assert not any(line.get("done") for line in run.lines)
