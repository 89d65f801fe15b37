"""
resource-supervisor: keep an asyncio service inside its memory and CPU budget.

One :class:`Supervisor` per process samples metrics (system, process, container
limits, memory pressure), publishes them as async streams, grades them into a
:class:`PressureLevel`, dispatches cleanup to awaitable handlers, and offloads
work through an executor broker (``sup.executors``).
"""

from __future__ import annotations

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
from ._peers import Peer as Peer
from ._snapshot import MetricsSnapshot as MetricsSnapshot
from ._snapshot import MetricValue as MetricValue
from ._snapshot import PressureLevel as PressureLevel
from ._supervisor import MetricSource as MetricSource
from ._supervisor import Supervisor as Supervisor

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
    "load_settings",
)
