"""
:class:`SupervisorSettings`: every setting of a supervisor, the top-level keys and
their relations, with the nested sections as fields.

Covers: the top-level fields, their cross-field checks (``warning < aggressive``,
hysteresis below the warning threshold, the session TTLs), and where values come from:
keyword arguments, then (only inside :func:`._config.load_settings`) the environment
and the YAML file (:mod:`._config_overrides`), then defaults. Does not cover: reading
the file (:mod:`._config_input`) or reporting errors (:mod:`._config_errors`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ._config_base import RelationError
from ._config_overrides import LoadingSource
from ._config_sections import AdmissionSettings, ConcurrencySettings, MultiprocessSettings
from ._limits import Cooldown, Duration, Interval, Percent, Timeout

__all__ = ("ENV_PREFIX", "SupervisorSettings")

ENV_PREFIX = "RESOURCE_SUPERVISOR_"
"""Prefix of the environment variables that override settings."""


class SupervisorSettings(BaseSettings):
    """
    Every setting of a :class:`Supervisor`, frozen. Build with :func:`load_settings`
    (YAML + environment) or directly with keyword arguments (pure defaults otherwise).
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        allow_inf_nan=False,
    )

    monitoring_interval: Interval = 30.0
    """Seconds between samples."""
    monitoring_enabled: bool = True
    """Sample in the background; when false, only ``update_metrics()`` samples."""
    memory_notifications: bool = True
    """Arm the kernel's memory notifications (cgroup v1 thresholds and pressure level,
    cgroup v2 ``memory.events``, PSI triggers) and sample at once when one fires, at
    most once per 10 ms; false = polling only. Needs ``monitoring_enabled``."""
    warning_threshold_memory: Percent = 75.0
    """Percent of the effective memory limit that enters WARNING (normal cleanup)."""
    aggressive_threshold_memory: Percent = 85.0
    """Percent of the effective memory limit that enters CRITICAL (aggressive cleanup)."""
    warning_threshold_cpu: Percent = 80.0
    """System CPU percent that logs a warning and emits an event (no cleanup)."""
    hysteresis: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)] = 5.0
    """Percentage points below a threshold the usage must fall to leave its level."""
    cleanup_cooldown: Cooldown = 30.0
    """While a level holds, its cleanup repeats at most once per this many seconds."""
    cleanup_handler_timeout: Timeout = 10.0
    """Seconds each cleanup handler may run before it is cancelled and reported as timeout."""
    provider_timeout: Timeout = 1.0
    """Seconds a metrics provider may take before it is skipped for that sample."""
    shutdown_timeout: Timeout = 10.0
    """Seconds the supervisor's exit waits for thread-lane calls still running and
    for session ``on_close`` callbacks before it abandons them (threads run on as
    daemons, so the interpreter can still exit)."""
    psi_warning_some_avg10: Percent | None = None
    """Optional: memory PSI ``some avg10`` that enters WARNING (None = off)."""
    psi_critical_full_avg10: Percent | None = None
    """Optional: memory PSI ``full avg10`` that enters CRITICAL (None = off)."""
    warning_threshold_gpu_memory: Percent | None = None
    """Optional: percent of a GPU's memory that enters WARNING (None = off)."""
    aggressive_threshold_gpu_memory: Percent | None = None
    """Optional: percent of a GPU's memory that enters CRITICAL (None = off)."""
    session_ttl: Duration = 1800.0
    """Seconds a session may stay idle before it expires (checked after every sample,
    whatever the pressure; normal cleanup evicts at the same age)."""
    session_ttl_aggressive: Duration = 300.0
    """Shorter idle cut used by aggressive cleanup."""
    stream_buffer: int = Field(default=16, ge=1, le=1_000_000)
    """Default buffer of a subscription (snapshots kept for a slow reader)."""
    concurrency: ConcurrencySettings = ConcurrencySettings()
    """The executor broker."""
    admission: AdmissionSettings = AdmissionSettings()
    """Adaptive admission control."""
    multiprocess: MultiprocessSettings = MultiprocessSettings()
    """Container-wide supervision of several server processes."""

    @model_validator(mode="after")
    def _check_relations(self) -> SupervisorSettings:
        problems: list[tuple[str, object, str]] = []
        if self.warning_threshold_memory >= self.aggressive_threshold_memory:
            problems.append(
                (
                    "warning_threshold_memory",
                    self.warning_threshold_memory,
                    "must be below aggressive_threshold_memory "
                    f"({self.aggressive_threshold_memory:g})",
                )
            )
        if self.hysteresis >= self.warning_threshold_memory:
            problems.append(
                (
                    "hysteresis",
                    self.hysteresis,
                    f"must be below warning_threshold_memory ({self.warning_threshold_memory:g})",
                )
            )
        gpu_w, gpu_a = self.warning_threshold_gpu_memory, self.aggressive_threshold_gpu_memory
        if gpu_w is not None and gpu_a is not None and gpu_w >= gpu_a:
            problems.append(
                (
                    "warning_threshold_gpu_memory",
                    gpu_w,
                    f"must be below aggressive_threshold_gpu_memory ({gpu_a:g})",
                )
            )
        if self.session_ttl_aggressive > self.session_ttl:
            problems.append(
                (
                    "session_ttl_aggressive",
                    self.session_ttl_aggressive,
                    f"must not exceed session_ttl ({self.session_ttl:g})",
                )
            )
        if problems:
            raise RelationError(problems)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment and YAML are only consulted inside load_settings(): the
        # context variable carries them, so direct construction stays pure.
        return (init_settings, LoadingSource(settings_cls))
