"""
Settings builders shared by the tests: one place for the small pools, long idle
timeouts and hang guards that tests use, so a test states only what it changes.

Covers: :func:`quiet` (supervisor settings without background sampling),
:func:`lane_settings` (a local process lane whose workers never retire mid-test) and
:func:`dask_settings` (an owned Dask cluster sized for this machine). The fixtures
built on them live in ``tests/conftest.py``.
"""

from __future__ import annotations

from resource_supervisor._config import (
    ConcurrencySettings,
    DaskSettings,
    SupervisorSettings,
    build_settings,
)

__all__ = ("MiB", "dask_settings", "lane_settings", "quiet")

MiB = 1024 * 1024


def quiet(**overrides: object) -> SupervisorSettings:
    """Settings for tests: no background sampling unless asked, tiny pools."""
    values: dict[str, object] = {
        "monitoring_enabled": False,
        "cleanup_cooldown": 30.0,
        "concurrency": {"default_cpu_workers": 1, "default_io_workers": 2},
    }
    values.update(overrides)
    return build_settings(**values)


def lane_settings(**values: object) -> ConcurrencySettings:
    """Process-lane settings whose idle workers stay for 30 s (not retired mid-test)."""
    return ConcurrencySettings.model_validate({"idle_timeout": 30.0, **values})


def dask_settings(**dask: object) -> ConcurrencySettings:
    """An owned two-worker cluster of 600 MiB per worker; *dask* overrides any of it."""
    values: dict[str, object] = {
        "n_workers": 2,
        "memory_limit_bytes": 600 * MiB,
        "connect_timeout": 30.0,  # hang guard: a cluster starts slowly on a busy machine
    }
    values.update(dask)
    return ConcurrencySettings(backend="dask", dask=DaskSettings.model_validate(values))
