"""
What a decision tells the world: the log lines and events of one graded sample.

Covers: :func:`announce` (a level change logged and published as
:class:`LevelChanged`, a CPU alert as :class:`CpuWarning`, a CPU recovery logged) and
:func:`cleanup_request` (the :class:`CleanupRequest` a cleanup plan starts). Does not
cover: deciding (:func:`._decision.decide`, pure) or starting the cleanup and telling
the lanes (:meth:`._supervisor.Supervisor._act`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._cleanup import CleanupRequest
from ._decision import CpuAlert, CpuRecovery
from ._events import CpuWarning, LevelChanged

if TYPE_CHECKING:
    from ._decision import CleanupPlan, Decision
    from ._events import SupervisorEvent
    from ._snapshot import MetricsSnapshot
    from ._streams import Broadcaster

__all__ = ("announce", "cleanup_request")

logger = logging.getLogger("resource_supervisor")


def announce(
    decision: Decision, snapshot: MetricsSnapshot, events: Broadcaster[SupervisorEvent]
) -> None:
    """Log *decision*'s level change and CPU news, and publish their events on *events*."""
    change = decision.transition
    if change is not None:
        log = logger.warning if change.level > change.previous else logger.info
        log(
            "pressure %s -> %s (memory %.1f%% of %d bytes, source %s)",
            change.previous.name,
            change.level.name,
            snapshot.memory_percent,
            snapshot.memory_limit_bytes,
            snapshot.memory_limit_source,
        )
        events.publish(
            LevelChanged(change.previous, change.level, snapshot, change.resource, change.device)
        )
    cpu = decision.cpu
    if isinstance(cpu, CpuAlert):
        if cpu.first:
            logger.warning(
                "system CPU at %.1f%% (warning threshold %g%%)", cpu.cpu_percent, cpu.threshold
            )
        events.publish(CpuWarning(cpu.cpu_percent, cpu.threshold, snapshot))
    elif isinstance(cpu, CpuRecovery):
        logger.info("system CPU back below %g%% (%.1f%%)", cpu.threshold, cpu.cpu_percent)


def cleanup_request(plan: CleanupPlan, snapshot: MetricsSnapshot) -> CleanupRequest:
    """The request that carries out *plan* for the sample *snapshot*."""
    return CleanupRequest(
        aggressive=plan.aggressive,
        level=plan.level,
        reason=plan.reason,
        snapshot=snapshot,
        resource=plan.resource,
        device=plan.device,
    )
