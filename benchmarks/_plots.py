"""
The report's figures: one per suite, one per timeline, and the summary on top.

Covers: :func:`plot_suite` (a panel per comparison, bars with full wrapped labels,
the ratio to the baseline beside each bar, plus a panel for the suite's curves),
:func:`plot_timeline` (stacked panels sharing a time axis, events as vertical
markers) and :func:`plot_summary` (every checked target as measured / limit, so
that one picture says which goals a run met). Every axis carries its unit; figures
are written at :data:`DPI`. matplotlib's Agg backend is used (no display) and
imported only when a figure is drawn.

Does not cover: the Markdown and JSON (:mod:`benchmarks._report`).
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ._harness import Comparison, Curve, SuiteResult, TargetCheck, Timeline

__all__ = ("DPI", "plot_suite", "plot_summary", "plot_timeline", "wrap")

DPI = 150
LABEL_WIDTH = 34
"""Characters per line of a wrapped case label: labels are wrapped, never cut."""


def wrap(text: str, width: int = LABEL_WIDTH) -> str:
    """Return *text* wrapped on word boundaries to lines of at most about *width*."""
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False)) or text


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, comparison: Comparison) -> None:
    names = [wrap(c.name) for c in comparison.cases]
    medians = [c.median for c in comparison.cases]
    mins = [c.min for c in comparison.cases]
    y = list(range(len(names)))
    ax.barh(y, medians, color="#4c72b0", label="median")
    ax.plot(mins, y, "k|", markersize=14, label="min")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(comparison.unit)
    ax.set_title(wrap(comparison.name, 70), fontsize=9)
    ax.tick_params(labelsize=7)
    positive = [m for m in medians if m > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_xscale("log")
    for i, case in enumerate(comparison.cases):
        ax.annotate(
            f"{case.ratio_median:.2f}x",
            (case.median, i),
            fontsize=7,
            xytext=(3, -3),
            textcoords="offset points",
        )
    ax.legend(
        fontsize=7,
        loc="lower right",
        title=f"ratio vs {comparison.baseline[:30]}",
        title_fontsize=6,
    )
    ax.grid(axis="x", alpha=0.3)


def _panel_height(comparison: Comparison) -> float:
    lines = sum(max(1, wrap(c.name).count("\n") + 1) for c in comparison.cases)
    return 1.2 + 0.28 * lines


def plot_suite(result: SuiteResult, path: Path) -> None:
    """Draw the suite's comparisons and curves into one PNG at *path*."""
    plt = _pyplot()
    # one panel per comparison, then one per y axis the curves use
    by_axis: dict[str, list[Curve]] = {}
    for curve in result.curves:
        by_axis.setdefault(curve.y_label, []).append(curve)
    panels: list[Comparison | list[Curve]] = [*result.comparisons, *by_axis.values()]
    heights = [_panel_height(p) if not isinstance(p, list) else 3.2 for p in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9.0, 0.8 + sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, panel in zip((row[0] for row in axes), panels, strict=True):
        if not isinstance(panel, list):
            _bars(ax, panel)
            continue
        for curve in panel:
            ax.plot(curve.x, curve.y, marker="o", label=wrap(curve.name, 50))
            ax.set_xlabel(curve.x_label)
            ax.set_ylabel(curve.y_label)
            if curve.log_x:
                ax.set_xscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"benchmark suite: {result.name}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_timeline(timeline: Timeline, path: Path) -> None:
    """Draw *timeline* as stacked panels sharing the time axis into a PNG at *path*."""
    plt = _pyplot()
    count = len(timeline.panels)
    fig, axes = plt.subplots(
        count, 1, figsize=(10.0, 1.2 + 2.1 * count), sharex=True, squeeze=False
    )
    flat = [row[0] for row in axes]
    for ax, panel in zip(flat, timeline.panels, strict=True):
        for track in panel.tracks:
            if track.points:
                ax.stem(
                    track.t,
                    track.y,
                    linefmt=":",
                    basefmt=" ",
                    label=track.name,
                    markerfmt="o" if "aggressive" not in track.name else "D",
                )
            elif track.step:
                ax.step(track.t, track.y, where="post", label=track.name)
            else:
                ax.plot(track.t, track.y, label=track.name)
        for i, (label, value) in enumerate(panel.references):
            ax.axhline(value, linestyle="--", linewidth=1, color=f"C{(i + 3) % 10}", label=label)
        if panel.y_ticks:
            ax.set_yticks([v for v, _ in panel.y_ticks], [n for _, n in panel.y_ticks])
        ax.set_ylabel(wrap(panel.y_label, 22), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(panel.tracks) + len(panel.references) > 1:
            ax.legend(fontsize=6, loc="upper left", ncols=2)
    for t, label in timeline.events:
        for ax in flat:
            ax.axvline(t, color="#999999", linewidth=0.8, linestyle=":")
        flat[0].annotate(
            label,
            (t, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            rotation=90,
            va="top",
            ha="right",
        )
    flat[-1].set_xlabel(timeline.x_label)
    fig.suptitle(wrap(timeline.title, 110), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _goodness(check: TargetCheck) -> float:
    """measured / limit for upper limits, limit / measured for speedups: <= 1 is met."""
    if check.kind == "speedup":
        return check.limit / check.measured if check.measured else math.inf
    return check.measured / check.limit if check.limit else math.inf


def plot_summary(checks: Sequence[tuple[str, TargetCheck]], path: Path) -> None:
    """
    Draw every checked target of a run as one bar of measured relative to its limit
    (1.0 = exactly at the limit, below is met) into a PNG at *path*.
    """
    plt = _pyplot()
    labels = [wrap(f"{suite}: {check.text}", 60) for suite, check in checks]
    values = [min(_goodness(check), 10.0) for _, check in checks]
    colors = ["#55a868" if check.met else "#c44e52" for _, check in checks]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10.0, 1.5 + 0.24 * max(lines, 3)))
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_xlabel(
        "measured / limit (speedup goals: limit / measured); 1.0 = the limit, "
        "green = met, red = missed; capped at 10"
    )
    for i, (_, check) in enumerate(checks):
        ax.annotate(
            f"{check.measured:.3g} {check.unit}",
            (values[i], i),
            fontsize=6,
            xytext=(3, -3),
            textcoords="offset points",
        )
    ax.set_title("Summary: every benchmark target of this run", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
