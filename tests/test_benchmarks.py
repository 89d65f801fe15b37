"""Tests of the benchmark harness and report writer (behaviour only, never speed)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio.to_thread
import pytest

from benchmarks._harness import (
    Case,
    SuiteResult,
    Target,
    compare,
    median_ratio,
    per_round_ratios,
    percentile,
    sequential_case,
)
from benchmarks._report import write_run
from benchmarks._runner import run_suite

if TYPE_CHECKING:
    from pathlib import Path


def _scripted(values: list[float]) -> Case:
    pending = list(values)

    async def measure() -> float:
        return pending.pop(0)

    return Case("", measure)


async def test_ratio_is_taken_per_round_against_the_baseline() -> None:
    """Each round's ratio is case / baseline of that same round; the median is of those."""
    base = _scripted([10.0, 20.0, 40.0])
    fast = _scripted([5.0, 5.0, 30.0])
    result = await compare(
        "pair",
        [Case("base", base.measure), Case("fast", fast.measure)],
        rounds=3,
        unit="us",
        targets=[
            Target("fast <= 0.6x base", "fast", "base", max_ratio=0.6),
            Target("fast >= 3x faster", "fast", "base", min_speedup=3.0),
            Target("fast <= 4 us", "fast", max_value=4.0),
        ],
    )
    stats = result.case("fast")
    assert stats.values == (5.0, 5.0, 30.0)
    assert stats.ratios == (0.5, 0.25, 0.75)
    assert stats.ratio_median == 0.5
    assert stats.ratio_min == 0.25
    assert stats.median == 5.0
    assert stats.min == 5.0
    assert result.case("base").ratios == (1.0, 1.0, 1.0)
    met = [check.met for check in result.targets]
    assert met == [True, False, False]
    assert result.targets[1].measured == 2.0  # median of 2, 4, 4/3


async def test_rounds_rotate_the_order_of_cases() -> None:
    """Round r starts with case r (mod n), so no case always runs first."""
    order: list[str] = []

    def case(name: str) -> Case:
        async def measure() -> float:
            order.append(name)
            return 1.0

        return Case(name, measure)

    await compare("rot", [case("a"), case("b"), case("c")], rounds=3, unit="us")
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


async def test_compare_rejects_unknown_target_case() -> None:
    """A target naming a case that is not compared is a programming error."""
    with pytest.raises(ValueError, match="unknown case"):
        await compare("x", [_scripted([1.0])], rounds=1, unit="us", targets=[Target("t", "nope")])


def test_ratio_helpers() -> None:
    """per_round_ratios divides pairwise; median_ratio takes the median of those."""
    assert per_round_ratios([2.0, 9.0], [1.0, 3.0]) == (2.0, 3.0)
    assert median_ratio([2.0, 9.0, 4.0], [1.0, 3.0, 4.0]) == 2.0
    with pytest.raises(ValueError, match="one value per round"):
        per_round_ratios([1.0], [1.0, 2.0])


def test_percentile_interpolates() -> None:
    """The percentile interpolates linearly between ranks."""
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


async def test_report_writes_json_markdown_and_png(tmp_path: Path) -> None:
    """A run with one timed trivial pair produces results.json, report.md and a PNG."""

    async def nothing() -> None:
        return None

    async def twice() -> None:
        await nothing()
        await nothing()

    result = SuiteResult("trivial")
    comparison = await compare(
        "trivial pair",
        [sequential_case("once", nothing, 20), sequential_case("twice", twice, 20)],
        rounds=2,
        unit="us/call",
        targets=[Target("twice <= 1000x once", "twice", "once", max_ratio=1000.0)],
    )
    result.comparisons.append(comparison)
    skipped = SuiteResult("missing", status="skipped", reason="a part is missing")
    out, latest = tmp_path / "run", tmp_path / "latest"

    def write_and_check() -> None:  # files: written and read off the event loop
        write_run([result, skipped], {"started": "now", "mode": "quick"}, out, latest)
        data = json.loads((out / "results.json").read_text())
        assert [s["name"] for s in data["suites"]] == ["trivial", "missing"]
        ratios = data["suites"][0]["comparisons"][0]["cases"][1]["ratios"]
        values = data["suites"][0]["comparisons"][0]["cases"]
        assert ratios == [
            b / a for a, b in zip(values[0]["values"], values[1]["values"], strict=True)
        ]
        report = (out / "report.md").read_text()
        assert "trivial pair" in report
        assert "twice <= 1000x once" in report
        assert "*skipped*: a part is missing" in report
        assert (out / "trivial.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not (out / "missing.png").exists()
        assert sorted(p.name for p in latest.iterdir()) == sorted(p.name for p in out.iterdir())

    await anyio.to_thread.run_sync(write_and_check)


def test_a_suite_that_fails_is_recorded_not_raised() -> None:
    """run_suite turns a suite's import failure into a skipped record with the reason."""
    result = run_suite("no_such_suite", quick=True, limit=5.0)
    assert result.status == "skipped"
    assert "no_such_suite" in result.reason
