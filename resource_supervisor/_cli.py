"""
The command line: ``resource-supervisor`` and ``python -m resource_supervisor``.

Covers: argument parsing, the ``watch`` live view of the metric stream (refreshed in
place on a terminal, one line per snapshot otherwise), ``check-config`` (validate a
YAML file and print the effective settings) and ``bench`` (run the project's
benchmarks from a checkout), and the pure formatting of a snapshot for the terminal.
Does not cover: sampling or settings themselves (see :mod:`._supervisor`,
:mod:`._config`) or the benchmarks (the ``benchmarks`` package of a checkout).

Exit status: 0 on success and on Ctrl-C; 2 for bad arguments or configuration; 1
when ``bench`` finds no benchmarks; otherwise the benchmarks' own status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

import yaml

from . import __version__
from ._config import build_settings, load_settings
from ._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._config import SupervisorSettings
    from ._snapshot import MetricsSnapshot

__all__ = ("annotate_auto", "format_block", "format_line", "main", "resolved_auto")

_PROG: Final = "resource-supervisor"
# ANSI: cursor to the start of the line N lines up, then clear to the end of screen.
_UP_AND_CLEAR: Final = "\x1b[{n}F\x1b[J"


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def _get(snapshot: MetricsSnapshot, key: str) -> float:
    return float(snapshot.get(key, 0.0))


def _busy_processes(snapshot: MetricsSnapshot) -> int:
    # The local lane counts busy workers; the Dask lane counts calls in flight.
    return int(_get(snapshot, "process_workers_busy") + _get(snapshot, "process_in_flight"))


def format_line(snapshot: MetricsSnapshot) -> str:
    """
    Render *snapshot* as one compact line. Pure.

    Args:
        snapshot: The snapshot.

    Returns:
        ``HH:MM:SS LEVEL mem P% (used/limit source) cpu P% rss N threads N ...``.
    """
    when = dt.datetime.fromtimestamp(snapshot.last_metrics_update_ts, tz=dt.UTC)
    return (
        f"{when.astimezone():%H:%M:%S} {snapshot.pressure_level.name:<8} "
        f"mem {snapshot.memory_percent:5.1f}% "
        f"({_mib(snapshot.memory_used_bytes)}/{_mib(snapshot.memory_limit_bytes)} "
        f"{snapshot.memory_limit_source}) "
        f"cpu {snapshot.system_cpu_percent:5.1f}% "
        f"rss {_mib(snapshot.process_rss_bytes)} "
        f"sessions {snapshot.active_sessions_rag} "
        f"threads {int(_get(snapshot, 'thread_lane_busy'))}/"
        f"{int(_get(snapshot, 'thread_lane_capacity'))} "
        f"procs {_busy_processes(snapshot)}/{int(_get(snapshot, 'process_workers_live'))} "
        f"cleanups {int(_get(snapshot, 'cleanup_runs_total'))}"
    )


def format_block(snapshot: MetricsSnapshot) -> list[str]:
    """
    Render *snapshot* as a few labelled lines for the in-place terminal view. Pure.

    Args:
        snapshot: The snapshot.

    Returns:
        The lines, without newlines.
    """
    when = dt.datetime.fromtimestamp(snapshot.last_metrics_update_ts, tz=dt.UTC)
    lines = [
        f"resource-supervisor  {when.astimezone():%Y-%m-%d %H:%M:%S}  "
        f"level {snapshot.pressure_level.name}",
        f"  memory   {snapshot.memory_percent:5.1f}%  {_mib(snapshot.memory_used_bytes)} of "
        f"{_mib(snapshot.memory_limit_bytes)} ({snapshot.memory_limit_source})",
        f"  host     mem {snapshot.system_memory_percent:5.1f}%  "
        f"cpu {snapshot.system_cpu_percent:5.1f}%",
        f"  process  rss {_mib(snapshot.process_rss_bytes)}  "
        f"cpu {float(snapshot.get('process_cpu_percent', 0.0)):5.1f}%  "
        f"threads {snapshot.get('process_threads', 0)}  fds {snapshot.get('process_fds', 0)}",
        f"  lanes    threads {int(_get(snapshot, 'thread_lane_busy'))}/"
        f"{int(_get(snapshot, 'thread_lane_capacity'))} busy  "
        f"processes {_busy_processes(snapshot)} busy of "
        f"{int(_get(snapshot, 'process_workers_live'))}, "
        f"{int(_get(snapshot, 'process_queue_depth'))} queued",
        f"  other    sessions {snapshot.active_sessions_rag}  "
        f"cleanups {int(_get(snapshot, 'cleanup_runs_total'))}  "
        f"stream drops {int(_get(snapshot, 'stream_dropped_total'))}",
    ]
    if "psi_memory_some_avg10" in snapshot:
        lines.append(f"  psi      memory some avg10 {_get(snapshot, 'psi_memory_some_avg10'):.2f}%")
    lines.extend(
        f"  gpu{i}     memory {_get(snapshot, f'gpu{i}_memory_percent'):5.1f}%  "
        f"{_mib(_get(snapshot, f'gpu{i}_memory_used_bytes'))}"
        for i in range(int(_get(snapshot, "gpu_count")))
        if f"gpu{i}_memory_percent" in snapshot
    )
    return lines


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Keep an asyncio service inside its memory and CPU budget: tools.",
        epilog=(
            "Settings come from the YAML section 'resource_management:' of --config and "
            "from RESOURCE_SUPERVISOR_* environment variables ('__' for nesting)."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    watch = commands.add_parser(
        "watch",
        help="live view of this machine's metrics as the supervisor sees them",
        description=(
            "Run a supervisor and show its metric stream: refreshed in place on a terminal, "
            "one line per snapshot otherwise. Ctrl-C stops (exit status 0)."
        ),
    )
    watch.add_argument("--config", metavar="PATH", help="YAML settings file")
    watch.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between snapshots (default: 1.0)",
    )
    watch.add_argument(
        "--count", type=int, default=None, metavar="N", help="stop after N snapshots"
    )
    watch.add_argument(
        "-v", "--verbose", action="store_true", help="also show the supervisor's warnings"
    )
    mode = watch.add_mutually_exclusive_group()
    mode.add_argument(
        "--plain", action="store_true", help="one line per snapshot, even on a terminal"
    )
    mode.add_argument(
        "--live", action="store_true", help="refresh in place, even when not a terminal"
    )

    check = commands.add_parser(
        "check-config",
        help="validate a YAML file and print the effective settings",
        description=(
            "Load PATH like load_settings() does (YAML, then environment overrides), and "
            "print the effective settings as YAML. A setting left to 'auto' is printed as "
            "'auto' with what it resolves to on this machine as a comment. Exit status 2 "
            "with the reason if invalid."
        ),
    )
    check.add_argument("path", metavar="PATH", help="YAML file with a resource_management: section")

    bench = commands.add_parser(
        "bench",
        help="run the benchmarks of a source checkout (python -m benchmarks)",
        description=(
            "Run 'python -m benchmarks' from the current directory (a source checkout). "
            "Arguments after 'bench' are passed through."
        ),
    )
    bench.add_argument("--quick", action="store_true", help="small counts, fewer rounds")
    return parser


def _watch_settings(config: str | None, interval: float) -> SupervisorSettings:
    settings = load_settings(config)
    values = settings.model_dump()
    values.update(monitoring_interval=interval, monitoring_enabled=True)
    return build_settings(**values)


async def _watch(
    settings: SupervisorSettings, *, count: int | None, live: bool, out: TextIO
) -> None:
    from ._supervisor import Supervisor  # the heavy part, only for this command

    shown = 0
    previous_lines = 0

    def show(snapshot: MetricsSnapshot) -> None:
        nonlocal shown, previous_lines
        if live:
            lines = format_block(snapshot)
            if previous_lines:
                out.write(_UP_AND_CLEAR.format(n=previous_lines))
            out.write("\n".join(lines) + "\n")
            previous_lines = len(lines)
        else:
            out.write(format_line(snapshot) + "\n")
        out.flush()
        shown += 1

    async with Supervisor(settings) as sup, sup.subscribe(policy="latest") as stream:
        show(sup.metrics)
        if count is not None and shown >= count:
            return
        async for snapshot in stream:
            show(snapshot)
            if count is not None and shown >= count:
                return


def _run_watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print(f"{_PROG}: --interval must be positive", file=sys.stderr)
        return 2
    if args.count is not None and args.count < 1:
        print(f"{_PROG}: --count must be at least 1", file=sys.stderr)
        return 2
    try:
        settings = _watch_settings(args.config, args.interval)
    except ConfigError as exc:
        print(f"{_PROG}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    live = args.live or (not args.plain and sys.stdout.isatty())
    # Warnings (e.g. "system CPU at 100%") would break the in-place view: opt-in.
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(_watch(settings, count=args.count, live=live, out=sys.stdout))
    except KeyboardInterrupt:
        # asyncio.run cancelled the view and let the supervisor close first.
        with contextlib.suppress(OSError):
            sys.stdout.write("\n")
            sys.stdout.flush()
    return 0


def _run_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.path)
    except ConfigError as exc:
        print(f"{_PROG}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    document = {"resource_management": settings.model_dump(mode="json")}
    text = yaml.safe_dump(document, sort_keys=False)
    sys.stdout.write(annotate_auto(text, resolved_auto(settings)))
    return 0


def resolved_auto(settings: SupervisorSettings) -> dict[str, str]:
    """
    Say what each ``auto`` setting of *settings* resolves to on this machine.

    Reads the usable CPU count (affinity and cgroup CPU quota) once; applies
    ``max_total_workers`` as the supervisor does.

    Args:
        settings: The settings to explain.

    Returns:
        Dotted key (below ``resource_management``) to a short explanation, for the
        keys whose value is ``auto`` only.
    """
    from ._running import resolve_io_workers
    from ._sources._cpus import usable_cpu_count
    from .broker._executors import split_worker_budget

    c = settings.concurrency
    cpus = usable_cpu_count()
    cpu_wanted = cpus if c.default_cpu_workers == "auto" else c.default_cpu_workers
    io_wanted = resolve_io_workers(c.default_io_workers, cpus)
    cpu_workers, io_workers = split_worker_budget(cpu_wanted, io_wanted, c.max_total_workers)
    capped = "" if c.max_total_workers is None else f", max_total_workers {c.max_total_workers}"
    notes: dict[str, str] = {}
    if c.default_cpu_workers == "auto":
        notes["concurrency.default_cpu_workers"] = (
            f"{cpu_workers} here ({cpus} usable CPUs{capped})"
        )
    if c.default_io_workers == "auto":
        notes["concurrency.default_io_workers"] = (
            f"{io_workers} here (min(32, {cpus} usable CPUs + 4){capped})"
        )
    if c.dask.n_workers == "auto":
        notes["concurrency.dask.n_workers"] = f"{cpu_workers} here (the process lane's workers)"
    return notes


def annotate_auto(text: str, notes: dict[str, str]) -> str:
    """
    Append ``# auto = ...`` comments to the ``auto`` lines of a YAML dump. Pure.

    Args:
        text: ``yaml.safe_dump`` output of the ``resource_management`` document
            (two-space indentation, block style).
        notes: Dotted key (below ``resource_management``) to explanation, as from
            :func:`resolved_auto`.

    Returns:
        *text* with each noted key's line commented; still valid YAML, and it loads
        to the same document.
    """
    out: list[str] = []
    path: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        depth = (len(line) - len(stripped)) // 2
        key, sep, value = stripped.partition(":")
        if sep:
            del path[depth:]
            path.append(key)
            note = notes.get(".".join(path[1:]))
            if note is not None and value.strip() == "auto":
                line = f"{line}  # auto = {note}"
        out.append(line)
    return "\n".join(out) + "\n"


def _run_bench(args: argparse.Namespace, extra: Sequence[str]) -> int:
    cwd = Path.cwd()
    # `python -m benchmarks` below imports from the current directory first.
    if not (cwd / "benchmarks" / "__main__.py").is_file():
        print(
            f"{_PROG}: no 'benchmarks' package here ({cwd}). The benchmarks ship with the "
            "source checkout, not the installed package: run this from the repository root "
            "(or use 'make bench').",
            file=sys.stderr,
        )
        return 1
    command = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else []), *extra]
    try:
        return subprocess.run(command, cwd=cwd, check=False).returncode
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command line.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status.
    """
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "watch":
        return _run_watch(args)
    if args.command == "check-config":
        return _run_check_config(args)
    return _run_bench(args, extra)
