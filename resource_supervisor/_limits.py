"""
The bounds of every numeric setting, and of the configuration file itself.

Covers: the annotated types :mod:`._config` gives its numeric fields (each with a
lower and an upper bound, never infinite nor NaN), the worker-count ceiling used by
the ``"auto"``-or-int validators, and the limits on a YAML section's shape (nesting
depth, node count). Does not cover: relations between settings (``warning <
aggressive``; see ``SupervisorSettings._check_relations``) or reading the file
(:func:`._config.load_settings`).

Why bounds at all: a value that validates must also work. ``cleanup_handler_timeout:
.inf`` used to pass validation and then fail in ``Supervisor()``; ``monitoring_interval:
1e-9`` samples continuously and burns a core; ``monitoring_interval: .inf`` made the
shedding middleware's ``Retry-After`` overflow. Every bound below is far from any
deployment seen, and close enough to catch a unit mistake (milliseconds given as
seconds, a byte count given as a number of GiB of GiB).
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

__all__ = (
    "MAX_BYTES",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "MAX_COUNT",
    "MAX_DURATION_SECONDS",
    "MAX_TIMEOUT_SECONDS",
    "MAX_WORKERS",
    "MIN_INTERVAL_SECONDS",
    "Bytes",
    "Cooldown",
    "Count",
    "Duration",
    "Interval",
    "Percent",
    "Retries",
    "Timeout",
    "WorkerCap",
)

MIN_INTERVAL_SECONDS: Final = 0.001
"""Shortest sampling or polling interval: below a millisecond a loop samples
continuously (a sample costs tens of microseconds) and starves the service."""
MAX_TIMEOUT_SECONDS: Final = 3600.0
"""Longest interval or timeout (an hour): a cleanup handler, provider or shutdown step
allowed longer than that is a hang nobody would wait for."""
MAX_DURATION_SECONDS: Final = 30 * 86400.0
"""Longest idle time (session TTLs, a worker's idle timeout): 30 days."""
MAX_WORKERS: Final = 1024
"""Most lane threads or worker processes: more than any machine has CPUs to feed."""
MAX_BYTES: Final = 1 << 60
"""Largest byte count (1 EiB): above any machine's memory."""
MAX_COUNT: Final = 1_000_000_000
"""Largest plain count (queue limit, calls per worker)."""

MAX_CONFIG_DEPTH: Final = 32
"""Deepest nesting accepted in a ``resource_management:`` section (it needs 3)."""
MAX_CONFIG_NODES: Final = 10_000
"""Most values visited in a section, YAML aliases counted each time they are used (a
few dozen are needed): bounds the work an alias bomb can cause."""

Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
"""A percentage, 0-100."""
Interval = Annotated[
    float, Field(ge=MIN_INTERVAL_SECONDS, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)
]
"""Seconds between two samples or polls."""
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]
"""Seconds something may take before it is given up."""
Duration = Annotated[float, Field(gt=0, le=MAX_DURATION_SECONDS, allow_inf_nan=False)]
"""Seconds something may stay idle."""
Cooldown = Annotated[float, Field(ge=0, le=MAX_DURATION_SECONDS, allow_inf_nan=False)]
"""Seconds between two repeats; 0 = no wait."""
Bytes = Annotated[int, Field(gt=0, le=MAX_BYTES)]
"""A positive byte count."""
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
"""A count, 0 allowed."""
WorkerCap = Annotated[int, Field(ge=1, le=2 * MAX_WORKERS)]
"""A cap on threads plus processes."""
Retries = Annotated[int, Field(ge=0, le=100)]
"""Retries of one call."""
