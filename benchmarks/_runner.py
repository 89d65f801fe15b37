"""
The benchmark runner behind ``python -m benchmarks [--quick] [--only NAME,...] [--out DIR]``.

Each suite runs in its own event loop under a time limit; a suite whose parts are
missing is recorded as skipped, one that raises or overruns as failed, and the
run goes on. Results go to ``benchmarks/results/<UTC timestamp>/`` (or ``--out``)
and are copied to ``benchmarks/results/latest/``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ._harness import SkipSuite, SuiteContext, SuiteResult
from ._report import run_meta, target_rows, write_run

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

SUITES = (
    "threads",
    "processes",
    "cold_start",
    "serializer",
    "mapping",
    "sampling",
    "loop_lag",
    "publish",
    "event_streams",
    "reaction",
    "survival",
    "adaptive",
    "loadtest",
    "admission",
    "dask_backend",
    "gpu",
)
"""Suite modules in run order; each defines ``async def run(ctx: SuiteContext)``."""

RESULTS = Path(__file__).parent / "results"


def run_suite(name: str, *, quick: bool, limit: float) -> SuiteResult:
    """
    Run one suite in a fresh event loop and return its record; never raises
    (except KeyboardInterrupt).

    *limit* is the default time limit; a suite module may set its own as
    ``TIME_LIMITS = {"full": seconds, "quick": seconds}``.
    """
    result = SuiteResult(name)
    ctx = SuiteContext(quick=quick, rounds=3 if quick else 5, result=result)
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.{name}")
        suite: Callable[[SuiteContext], Awaitable[None]] = module.run
        limit = getattr(module, "TIME_LIMITS", {}).get("quick" if quick else "full", limit)

        async def main() -> None:
            with anyio.fail_after(limit):
                await suite(ctx)

        asyncio.run(main())
    except TimeoutError:
        result.status, result.reason = "failed", f"ran past its {limit:.0f} s limit"
    except Exception as exc:  # noqa: BLE001 - recorded; one suite never stops the run
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, SkipSuite):
            result.status, result.reason = "skipped", str(exc)
        elif isinstance(exc, ImportError):
            result.status, result.reason = "skipped", f"a part is missing: {exc}"
        else:
            traceback.print_exception(exc)
            last = traceback.extract_tb(exc.__traceback__)[-1]
            result.status = "failed"
            where = f"{Path(last.filename).name}:{last.lineno}"
            result.reason = f"{type(exc).__name__}: {exc} ({where})"
    result.seconds = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the suites, write the report; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, 3 rounds (< 2 min)")
    parser.add_argument("--only", default="", help="comma-separated suite names")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SUITES)
    unknown = sorted(set(names) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out if args.out is not None else RESULTS / stamp
    limit = 40.0 if args.quick else 240.0
    results = []
    for name in names:
        print(f"[bench] {name} ...", flush=True)
        result = run_suite(name, quick=args.quick, limit=limit)
        print(f"[bench] {name}: {result.status} {result.reason} ({result.seconds:.1f} s)")
        results.append(result)
    meta = run_meta(stamp, quick=args.quick)
    latest = RESULTS / "latest" if args.out is None else None
    write_run(results, meta, out, latest)
    for row in target_rows(results):
        print(f"[target] {row[4]:>10}  {row[0]}: {row[1]}: {row[2]} ({row[3]})")
    print(f"[bench] report: {out / 'report.md'}")
    return 0
