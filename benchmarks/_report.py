"""
Writing a benchmark run: ``results.json``, ``report.md`` and the PNG figures.

Covers: :func:`write_run` (the outputs in one folder, then a copy in
``results/latest``), :func:`to_json` and :func:`render_markdown` (the summary
figure first, then the targets, then each suite with its figures).

Does not cover: drawing (:mod:`benchmarks._plots`), measuring
(:mod:`benchmarks._harness`) or running suites (:mod:`benchmarks.__main__`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import shutil
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ._harness import Comparison, SuiteResult

__all__ = ("render_markdown", "run_meta", "target_rows", "to_json", "write_run")


def _fmt(value: float) -> str:
    if math.isinf(value) or math.isnan(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _json_safe(value: object) -> object:
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def to_json(results: Sequence[SuiteResult], meta: dict[str, object]) -> str:
    """Return the run as JSON text (``inf``/``nan`` written as strings)."""
    suites = [dataclasses.asdict(result) for result in results]
    return json.dumps(_json_safe({"meta": meta, "suites": suites}), indent=1)


def _comparison_md(comparison: Comparison) -> list[str]:
    lines = [
        f"#### {comparison.name}",
        "",
        f"{comparison.rounds} interleaved rounds; ratio = case / `{comparison.baseline}` "
        "in the same round (median of the per-round ratios).",
        "",
        f"| case | median {comparison.unit} | min {comparison.unit} | ratio median | ratio min |",
        "|---|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {c.name} | {_fmt(c.median)} | {_fmt(c.min)} | {_fmt(c.ratio_median)}x "
        f"| {_fmt(c.ratio_min)}x |"
        for c in comparison.cases
    )
    if comparison.note:
        lines += ["", comparison.note]
    lines.append("")
    return lines


def target_rows(results: Sequence[SuiteResult]) -> list[list[str]]:
    """Return one row per checked target: suite, goal, measured, limit, met."""
    rows: list[list[str]] = []
    for result in results:
        for comparison in result.comparisons:
            for check in comparison.targets:
                sign = {"ratio": "<=", "speedup": ">=", "value": "<="}[check.kind]
                rows.append(
                    [
                        result.name,
                        check.text,
                        f"{_fmt(check.measured)} {check.unit}",
                        f"{sign} {_fmt(check.limit)} {check.unit}",
                        "met" if check.met else "**missed**",
                    ]
                )
    return rows


def render_markdown(results: Sequence[SuiteResult], meta: dict[str, object]) -> str:
    """Return the report as Markdown: targets first, then each suite's tables."""
    lines = [
        "# Benchmark report",
        "",
        f"Run {meta.get('started', '?')} UTC, mode `{meta.get('mode', '?')}`, "
        f"Python {meta.get('python', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"{meta.get('platform', '?')}. Absolute times move 1.2-3x between runs on shared "
        "machines; compare the ratios, which are measured side by side in one run.",
        "",
        *(
            ["![Summary: every target of this run, measured against its limit](summary.png)", ""]
            if target_rows(results)
            else []
        ),
        "## Targets (BASELINES.md)",
        "",
        "| suite | target | measured | limit | |",
        "|---|---|---:|---:|---|",
    ]
    lines.extend(f"| {' | '.join(row)} |" for row in target_rows(results))
    lines += ["", "## Suites", "", "| suite | status | seconds | reason |", "|---|---|---:|---|"]
    lines.extend(
        f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.reason.replace('|', '/')} |"
        for r in results
    )
    lines.append("")
    for result in results:
        lines += [f"### {result.name}", ""]
        if result.status != "ok":
            lines += [f"*{result.status}*: {result.reason}", ""]
        for comparison in result.comparisons:
            lines += _comparison_md(comparison)
        for title, header, rows in result.tables:
            lines += [f"#### {title}", "", f"| {' | '.join(header)} |"]
            lines.append("|" + "---|" * len(header))
            lines.extend(f"| {' | '.join(row)} |" for row in rows)
            lines.append("")
        lines.extend(f"- {note}" for note in result.notes)
        if result.comparisons or result.curves:
            lines += ["", f"![{result.name}]({result.name}.png)"]
        for index, timeline in enumerate(result.timelines):
            lines += ["", f"![{timeline.title}]({_timeline_file(result.name, index)})"]
        lines.append("")
    return "\n".join(lines)


def _timeline_file(suite: str, index: int) -> str:
    return f"{suite}-timeline-{index + 1}.png"


def write_run(
    results: Sequence[SuiteResult], meta: dict[str, object], out: Path, latest: Path | None
) -> list[Path]:
    """
    Write ``results.json``, ``report.md``, ``summary.png`` (when a target was checked),
    a PNG per suite with figures and one per timeline into *out*, then replace
    *latest* (when given) with a copy.

    Returns:
        The files written in *out*.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "report.md"]
    written[0].write_text(to_json(results, meta))
    written[1].write_text(render_markdown(results, meta))
    from ._plots import plot_suite, plot_summary, plot_timeline

    checks = [(r.name, check) for r in results for c in r.comparisons for check in c.targets]
    if checks:
        written.append(out / "summary.png")
        plot_summary(checks, written[-1])
    for result in results:
        if result.comparisons or result.curves:
            written.append(out / f"{result.name}.png")
            plot_suite(result, written[-1])
        for index, timeline in enumerate(result.timelines):
            written.append(out / _timeline_file(result.name, index))
            plot_timeline(timeline, written[-1])
    if latest is not None and latest.resolve() != out.resolve():
        if latest.exists():
            shutil.rmtree(latest)
        shutil.copytree(out, latest)
    return written


def run_meta(started: str, *, quick: bool) -> dict[str, object]:
    """Return the run's description for the report header."""
    import os

    return {
        "started": started,
        "mode": "quick" if quick else "full",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
    }
