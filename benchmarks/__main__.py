"""
Run the benchmark suites: ``python -m benchmarks [--quick] [--only NAME,...] [--out DIR]``.

Absolute imports only: worker processes (anyio.to_process, multiprocessing) may
import this file as a plain module.
"""

from __future__ import annotations

from benchmarks._runner import main

if __name__ == "__main__":
    raise SystemExit(main())
