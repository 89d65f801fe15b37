"""
resource-supervisor: keep an asyncio service inside its memory and CPU budget.

One :class:`Supervisor` per process samples metrics (system, process, container
limits, memory pressure), publishes them as async streams, grades them into a
:class:`PressureLevel`, dispatches cleanup to awaitable handlers, and offloads
work through an executor broker (``sup.executors``).

The public names are imported on first use (module ``__getattr__``, PEP 562), so
importing a private module (as the process lane's workers do) does not import
the whole package: a worker never loads pydantic or YAML unless its own work does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._admission._limiter import AdmissionLimiter as AdmissionLimiter
    from ._admission._limiter import AdmissionStatistics as AdmissionStatistics
    from ._cleanup import Cleanup as Cleanup
    from ._cleanup import CleanupReport as CleanupReport
    from ._cleanup import CleanupRequest as CleanupRequest
    from ._cleanup import HandlerOutcome as HandlerOutcome
    from ._config import AdmissionSettings as AdmissionSettings
    from ._config import ConcurrencySettings as ConcurrencySettings
    from ._config import DaskSecuritySettings as DaskSecuritySettings
    from ._config import DaskSettings as DaskSettings
    from ._config import MultiprocessSettings as MultiprocessSettings
    from ._config import SupervisorSettings as SupervisorSettings
    from ._config import load_settings as load_settings
    from ._events import CleanupCompleted as CleanupCompleted
    from ._events import CpuWarning as CpuWarning
    from ._events import LevelChanged as LevelChanged
    from ._events import SupervisorEvent as SupervisorEvent
    from ._exceptions import AdmissionRejectedError as AdmissionRejectedError
    from ._exceptions import CallTimeoutError as CallTimeoutError
    from ._exceptions import ClusterConnectionLostError as ClusterConnectionLostError
    from ._exceptions import ConfigError as ConfigError
    from ._exceptions import ConfigWarning as ConfigWarning
    from ._exceptions import ExecutorError as ExecutorError
    from ._exceptions import NoSupervisorError as NoSupervisorError
    from ._exceptions import OverloadedError as OverloadedError
    from ._exceptions import ResourceSupervisorError as ResourceSupervisorError
    from ._exceptions import SupervisorClosedError as SupervisorClosedError
    from ._exceptions import UnpicklableError as UnpicklableError
    from ._exceptions import WorkerCrashedError as WorkerCrashedError
    from ._metric_source import WrappingSource as WrappingSource
    from ._peers import Peer as Peer
    from ._snapshot import MetricsSnapshot as MetricsSnapshot
    from ._snapshot import MetricValue as MetricValue
    from ._snapshot import PressureLevel as PressureLevel
    from ._supervisor import MetricSource as MetricSource
    from ._supervisor import Supervisor as Supervisor

# public name -> private module defining it, imported on first attribute access
_LAZY: dict[str, str] = {
    "AdmissionLimiter": "._admission._limiter",
    "AdmissionStatistics": "._admission._limiter",
    "Cleanup": "._cleanup",
    "CleanupReport": "._cleanup",
    "CleanupRequest": "._cleanup",
    "HandlerOutcome": "._cleanup",
    "AdmissionSettings": "._config",
    "ConcurrencySettings": "._config",
    "DaskSecuritySettings": "._config",
    "DaskSettings": "._config",
    "MultiprocessSettings": "._config",
    "SupervisorSettings": "._config",
    "load_settings": "._config",
    "CleanupCompleted": "._events",
    "CpuWarning": "._events",
    "LevelChanged": "._events",
    "SupervisorEvent": "._events",
    "AdmissionRejectedError": "._exceptions",
    "CallTimeoutError": "._exceptions",
    "ClusterConnectionLostError": "._exceptions",
    "ConfigError": "._exceptions",
    "ConfigWarning": "._exceptions",
    "ExecutorError": "._exceptions",
    "NoSupervisorError": "._exceptions",
    "OverloadedError": "._exceptions",
    "ResourceSupervisorError": "._exceptions",
    "SupervisorClosedError": "._exceptions",
    "UnpicklableError": "._exceptions",
    "WorkerCrashedError": "._exceptions",
    "Peer": "._peers",
    "MetricsSnapshot": "._snapshot",
    "MetricValue": "._snapshot",
    "PressureLevel": "._snapshot",
    "MetricSource": "._supervisor",
    "Supervisor": "._supervisor",
    "WrappingSource": "._metric_source",
}

__version__ = "0.1.0"

__all__ = (
    "AdmissionLimiter",
    "AdmissionRejectedError",
    "AdmissionSettings",
    "AdmissionStatistics",
    "CallTimeoutError",
    "Cleanup",
    "CleanupCompleted",
    "CleanupReport",
    "CleanupRequest",
    "ClusterConnectionLostError",
    "ConcurrencySettings",
    "ConfigError",
    "ConfigWarning",
    "CpuWarning",
    "DaskSecuritySettings",
    "DaskSettings",
    "ExecutorError",
    "HandlerOutcome",
    "LevelChanged",
    "MetricSource",
    "MetricValue",
    "MetricsSnapshot",
    "MultiprocessSettings",
    "NoSupervisorError",
    "OverloadedError",
    "Peer",
    "PressureLevel",
    "ResourceSupervisorError",
    "Supervisor",
    "SupervisorClosedError",
    "SupervisorEvent",
    "SupervisorSettings",
    "UnpicklableError",
    "WorkerCrashedError",
    "WrappingSource",
    "load_settings",
)


if not TYPE_CHECKING:  # type checkers see the imports above, and no __getattr__

    def __getattr__(name: str) -> object:
        """Import a public name's module on first access (PEP 562) and keep the value."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
