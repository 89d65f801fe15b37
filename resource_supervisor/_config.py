"""
Settings: the ``resource_management:`` YAML section, environment overrides, validation.

Covers: :class:`SupervisorSettings` (frozen), :func:`load_settings` (YAML file, then
``RESOURCE_SUPERVISOR_*`` environment variables with ``__`` for nesting), and the
translation of every validation failure into :class:`ConfigError` naming the dotted
key, the value and the reason. Does not cover: what the settings mean at run time
(see :mod:`._policy`, :mod:`._supervisor`, :mod:`.broker`).

Precedence, highest first: keyword arguments given to ``SupervisorSettings(...)``,
environment variables (only inside :func:`load_settings`), the YAML file, defaults.
Core code never reads the environment: constructing ``SupervisorSettings()``
directly gives pure defaults.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ._config_input import SECTION as _SECTION
from ._config_input import read_section, setting_variables, suggest
from ._exceptions import ConfigError
from ._limits import (
    MAX_COUNT,
    MAX_WORKERS,
    Bytes,
    Cooldown,
    Count,
    Duration,
    Interval,
    Percent,
    Retries,
    Timeout,
    WorkerCap,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic.fields import FieldInfo

__all__ = (
    "ENV_PREFIX",
    "AdmissionSettings",
    "ConcurrencySettings",
    "DaskSecuritySettings",
    "DaskSettings",
    "MultiprocessSettings",
    "SupervisorSettings",
    "load_settings",
)

ENV_PREFIX = "RESOURCE_SUPERVISOR_"


def _auto_or_positive_int(value: object) -> object:
    """Accept ``"auto"`` or an integer 1..MAX_WORKERS (also a digit string from env)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        # pydantic turns ValueError (not TypeError) into a validation error
        raise ValueError('must be "auto" or a positive integer')  # noqa: TRY004
    if value < 1:
        raise ValueError('must be "auto" or a positive integer (>= 1)')
    if value > MAX_WORKERS:
        raise ValueError(f'must be "auto" or a positive integer up to {MAX_WORKERS}')
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )


def _readable_pem(value: str | None, marker: str, what: str) -> str | None:
    """A path to a readable file holding a PEM block whose header contains *marker*."""
    if value is None:
        return None
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from exc
    if not re.search(rf"-----BEGIN [A-Z ]*{marker}-----", text):
        raise ValueError(f"holds no PEM {what}")
    return value


class DaskSecuritySettings(_Frozen):
    """
    TLS credentials for a connected Dask scheduler (``dask.address`` or
    ``dask.scheduler_file`` at a ``tls://`` address). An owned cluster makes its own.

    Each path must name a readable PEM file; the certificate and key must match.
    """

    ca_file: str | None = None
    """PEM file of the CA that signed the scheduler's and workers' certificates."""
    cert_file: str | None = None
    """PEM file of this client's certificate (it may also hold the key)."""
    key_file: str | None = None
    """PEM file of this client's private key (``None``: it is in ``cert_file``)."""

    @field_validator("ca_file")
    @classmethod
    def _check_ca(cls, value: str | None) -> str | None:
        return _readable_pem(value, "CERTIFICATE", "certificate")

    @field_validator("cert_file")
    @classmethod
    def _check_cert(cls, value: str | None) -> str | None:
        return _readable_pem(value, "CERTIFICATE", "certificate")

    @field_validator("key_file")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return _readable_pem(value, "PRIVATE KEY", "private key")

    @model_validator(mode="after")
    def _check_pair(self) -> DaskSecuritySettings:
        import ssl

        prefix = "concurrency.dask.security"
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if given and self.ca_file is None:
            raise _RelationError([(f"{prefix}.ca_file", None, "required with cert_file/key_file")])
        if given and self.cert_file is None:
            raise _RelationError([(f"{prefix}.cert_file", None, "required with ca_file")])
        if self.ca_file is None or self.cert_file is None:
            return self
        if self.key_file is None:
            try:
                _readable_pem(self.cert_file, "PRIVATE KEY", "private key")
            except ValueError:
                reason = "holds no private key, and key_file is not set"
                raise _RelationError([(f"{prefix}.cert_file", self.cert_file, reason)]) from None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            context.load_verify_locations(cafile=self.ca_file)
        except ssl.SSLError as exc:
            raise _RelationError([(f"{prefix}.ca_file", self.ca_file, f"not a CA: {exc}")]) from exc
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            key = "key_file" if self.key_file is not None else "cert_file"
            value = getattr(self, key)
            reason = f"certificate and key do not load as a pair: {exc}"
            raise _RelationError([(f"{prefix}.{key}", value, reason)]) from exc
        return self


class DaskSettings(_Frozen):
    """
    The distributed backend of the process lane (``concurrency.backend: dask``).

    With ``address`` or ``scheduler_file`` the lane connects to an existing
    scheduler and never closes it; with neither, the supervisor owns a
    ``LocalCluster`` on 127.0.0.1.
    """

    address: str | None = None
    """``tcp://host:port`` of an existing scheduler."""
    scheduler_file: str | None = None
    """Path of a scheduler file written by ``dask scheduler --scheduler-file``."""
    n_workers: int | Literal["auto"] = "auto"
    """Owned cluster only: worker processes (``auto`` = the lane's worker count)."""
    memory_limit_bytes: Bytes | None = None
    """Owned cluster only: memory limit per worker (``None`` = effective limit / workers)."""
    retries: Retries = 0
    """0 = at most once (crash fails the call); N > 0 = at least once with N retries."""
    scheduler_in_subprocess: bool = False
    """Owned cluster only: run the scheduler in its own process, off the service's loop."""
    target_chunk_seconds: Timeout = 0.5
    """map_in_processes grows chunks until each takes about this long (a Dask task
    costs ~3 ms on an owned cluster, more over a network, so 0.5 s keeps that floor
    near 1 %)."""
    poll_interval: Interval = 1.0
    """Seconds between reads of the cluster's pressure (paused workers, memory, queue)."""
    connect_timeout: Timeout = 10.0
    """Seconds to wait for the scheduler (and owned workers) on start."""
    close_timeout: Timeout = 10.0
    """Seconds to wait for an owned cluster to close before killing what is left."""
    tls: bool = True
    """Owned cluster only: TLS with credentials made for that cluster, so no other
    process can use it. ``False`` = plain tcp, which lets any local process run code
    as this service (only where no one else can reach the host's loopback)."""
    security: DaskSecuritySettings = DaskSecuritySettings()
    """Connected scheduler only: TLS credentials (CA, certificate, key paths)."""

    _check_workers = field_validator("n_workers", mode="before")(_auto_or_positive_int)

    @model_validator(mode="after")
    def _one_target(self) -> DaskSettings:
        if self.address is not None and self.scheduler_file is not None:
            raise ValueError("give either address or scheduler_file, not both")
        connected = self.address is not None or self.scheduler_file is not None
        if self.security.ca_file is not None and not connected:
            reason = (
                "applies to a connected scheduler (address or scheduler_file); "
                "an owned cluster makes its own credentials"
            )
            raise _RelationError(
                [("concurrency.dask.security", self.security.model_dump(), reason)]
            )
        return self


class ConcurrencySettings(_Frozen):
    """
    The executor broker: thread lane (I/O) and process lane (CPU).
    """

    default_cpu_workers: int | Literal["auto"] = "auto"
    """Process workers; ``auto`` = usable CPUs (affinity and cgroup CPU quota)."""
    default_io_workers: int | Literal["auto"] = "auto"
    """Thread-lane threads; ``auto`` = ``min(32, usable CPUs + 4)`` as CPython's default."""
    max_total_workers: WorkerCap | None = None
    """Optional cap on lane threads plus worker processes together."""
    start_method: Literal["forkserver", "spawn", "fork"] = "forkserver"
    """How worker processes start; forkserver is safe in a threaded asyncio process."""
    idle_timeout: Duration = 60.0
    """Seconds a worker process may sit idle before it is retired."""
    queue_limit: Count = 1000
    """Calls the process lane keeps queued at CRITICAL before refusing new ones."""
    max_tasks_per_worker: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    """Retire a worker process after this many calls (None = never)."""
    worker_max_rss_bytes: Bytes | None = None
    """Retire a worker process between calls once its RSS exceeds this."""
    worker_oom_score_adj: Annotated[int, Field(ge=-1000, le=1000)] | None = 500
    """``oom_score_adj`` each worker process sets for itself, so the kernel's OOM killer
    picks a worker before the service (None = leave the inherited value). Lowering it
    below the service's own value needs privileges."""
    default_thread_limiter_tokens: Annotated[int, Field(ge=1, le=MAX_COUNT)] | None = None
    """Size of anyio's default thread limiter (FastAPI ``def`` endpoints, sync
    dependencies, ``run_in_threadpool``) while the supervisor runs; ``None`` = leave it
    (anyio's default is 40)."""
    govern_default_thread_limiter: bool = False
    """Shrink that limiter under pressure (half at WARNING, a quarter at CRITICAL, at
    least 1) and restore it when pressure clears."""
    serializer: Literal["pickle", "cloudpickle"] = "pickle"
    """How the local process lane sends functions: ``pickle`` (by reference: module-level
    functions only) or ``cloudpickle`` (by value: lambdas and functions defined in a
    notebook's ``__main__`` too; the ``cloudpickle`` extra, slower per call)."""
    prestart_process_lane: bool = False
    """Start the process lane (its forkserver and one worker) when the supervisor
    starts, so the first call does not pay for it; else it starts on first use."""
    container_cpu_workers: int | Literal["auto"] = "auto"
    """Lane workers of all supervised server processes of the container together
    (multi-process mode); ``auto`` = usable CPUs."""
    backend: Literal["local", "dask"] = "local"
    """Where the process lane runs: local worker processes or a Dask cluster."""
    dask: DaskSettings = DaskSettings()
    """Settings of the Dask backend (used when ``backend: dask``)."""

    _check_workers = field_validator(
        "default_cpu_workers", "default_io_workers", "container_cpu_workers", mode="before"
    )(_auto_or_positive_int)


class MultiprocessSettings(_Frozen):
    """
    Container-wide supervision of several server processes (``gunicorn -w N``,
    ``uvicorn --workers N``) through a shared directory.

    .. versionadded:: 0.2
    """

    enabled: bool | Literal["auto"] = "auto"
    """Join the container's shared directory; ``auto`` = when the parent process is a
    gunicorn master or a ``uvicorn --workers`` supervisor."""
    directory: str | None = None
    """The shared directory; ``None`` = ``/dev/shm/resource-supervisor-<uid>-<key>``,
    keyed by the memory cgroup. Created 0700; refused if it is open to other users."""
    worker_index: Annotated[int, Field(ge=0, le=MAX_COUNT)] | None = None
    """This process's worker index in its server, exported as the ``worker`` label."""


class AdmissionSettings(_Frozen):
    """
    Adaptive admission control (``sup.admission`` and ``AdmissionMiddleware``).

    .. versionadded:: 0.2
    """

    initial_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 20
    """Calls admitted at once before any latency is measured."""
    min_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1
    """The floor; CRITICAL memory pressure drops the limit here."""
    max_limit: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1000
    """The ceiling."""
    queue_limit: Count = 32
    """Callers that may wait for a slot; beyond it they are refused at once."""
    queue_timeout: Timeout | Literal["auto"] | None = "auto"
    """Seconds a caller may wait; ``auto`` = twice the minimum latency times ``tolerance``.
    The queue is FIFO until its oldest caller has waited half of this, then LIFO."""
    tolerance: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    """How much slower than the minimum latency calls may get before the limit shrinks."""
    smoothing: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """Weight of each window's target in the limit (lower = steadier, slower)."""
    window_samples: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 10
    """Completed calls per update of the limit."""
    long_window: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 20
    """Windows averaged by the long latency estimate."""
    probe_interval: Timeout | None = 10.0
    """Seconds between minimum-latency probes (limit pinned at min_limit for one window)."""
    cpu_saturation_percent: Percent | None = 95.0
    """Process CPU (percent of the usable CPUs) that tightens the limit (None = off)."""
    cpu_throttled_percent: Annotated[float, Field(gt=0, le=100)] | None = 5.0
    """Percent of cgroup quota periods throttled that tightens the limit (None = off)."""
    cpu_backoff: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.8
    """Factor applied to the limit per sample while the CPU is saturated or throttled."""
    reject_status: Literal[429, 503] = 503
    """HTTP status the middleware answers when it refuses a request."""

    @model_validator(mode="after")
    def _ordered(self) -> AdmissionSettings:
        if self.max_limit < self.min_limit:
            raise _RelationError(
                [
                    (
                        "admission.max_limit",
                        self.max_limit,
                        f"must not be below min_limit ({self.min_limit})",
                    )
                ]
            )
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise _RelationError(
                [
                    (
                        "admission.initial_limit",
                        self.initial_limit,
                        "must lie between min_limit "
                        f"({self.min_limit}) and max_limit ({self.max_limit})",
                    )
                ]
            )
        return self


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
            raise _RelationError(problems)
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
        return (init_settings, _LoadingSource(settings_cls))


class _RelationError(ValueError):
    """Failed cross-field checks, each knowing which key is at fault."""

    def __init__(self, problems: list[tuple[str, object, str]]) -> None:
        super().__init__("; ".join(reason for _, _, reason in problems))
        self.problems = problems


_LOADING: contextvars.ContextVar[tuple[dict[str, Any], dict[str, str]] | None] = (
    contextvars.ContextVar("resource_supervisor_loading", default=None)
)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _GivenEnvSource(EnvSettingsSource):
    """The standard environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # settings are case-insensitive: the standard source lower-cases names too
        return {name.lower(): value for name, value in self._given.items()}


class _LoadingSource(PydanticBaseSettingsSource):
    """YAML data with environment overrides, active only inside load_settings()."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        loading = _LOADING.get()
        if loading is None:
            return {}
        yaml_data, environ = loading
        return _deep_merge(yaml_data, _GivenEnvSource(self.settings_cls, environ)())


# -- load_settings ---------------------------------------------------------------


def _field_paths(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel] | None]:
    """Every dotted key path of *model*, mapped to its nested model type (or None)."""
    paths: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths[path] = annotation
            paths.update(_field_paths(annotation, f"{path}."))
        else:
            paths[path] = None
    return paths


def _translate(
    exc: ValidationError, *, source: str | None = None, env: Mapping[str, str] | None = None
) -> ConfigError:
    """
    Turn every pydantic error into one ConfigError naming each key, value and reason.

    *env* maps the dotted keys set by the environment to their variable names, so a
    value that came from there says so.
    """
    problems: list[tuple[str, object, str]] = []
    for error in exc.errors(include_url=False):
        ctx_error = error.get("ctx", {}).get("error")
        if isinstance(ctx_error, _RelationError):
            problems.extend((f"{_SECTION}.{k}", v, r) for k, v, r in ctx_error.problems)
            continue
        key, reason = _locate(error)
        if env is not None and key in env:
            reason += f" (from environment variable {env[key]})"
        problems.append((f"{_SECTION}.{key}", error.get("input"), reason))
    seen: set[str] = set()
    unique = []
    for problem in problems:  # a union reports one error per branch: keep the first
        if problem[0] not in seen:
            seen.add(problem[0])
            unique.append(problem)
    (key, value, reason), *more = unique
    return ConfigError(key, value, reason, source, tuple(more))


def _locate(error: Any) -> tuple[str, str]:
    """The dotted key of one pydantic error (branch tags dropped) and its reason."""
    loc = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
    # drop the union/literal branch tags pydantic appends (e.g. "int", "literal['auto']")
    known = _field_paths(SupervisorSettings)
    parts: list[str] = []
    for part in loc:
        candidate = ".".join([*parts, part])
        if candidate in known or error["type"] == "extra_forbidden":
            parts.append(part)
    key = ".".join(parts) or "<root>"
    if error["type"] == "extra_forbidden":
        parent = ".".join(parts[:-1])
        siblings = [p[len(parent) + 1 :] if parent else p for p in known if _is_child(p, parent)]
        return key, "unknown setting" + suggest(parts[-1], siblings)
    return key, str(error["msg"]).removeprefix("Value error, ")


def _is_child(path: str, parent: str) -> bool:
    if not parent:
        return "." not in path
    return path.startswith(parent + ".") and "." not in path[len(parent) + 1 :]


def _check_nested_mappings(section: Mapping[str, Any], where: str) -> None:
    for key, nested in (
        ("concurrency", ConcurrencySettings),
        ("concurrency.dask", DaskSettings),
        ("concurrency.dask.security", DaskSecuritySettings),
    ):
        node: Any = section
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            raise ConfigError(
                f"{_SECTION}.{key}", node, f"must be a mapping ({nested.__name__})", where
            )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    missing_ok: bool = False,
) -> SupervisorSettings:
    """
    Read settings from the ``resource_management:`` section of a YAML file, then
    apply ``RESOURCE_SUPERVISOR_*`` environment overrides (``__`` for nesting, e.g.
    ``RESOURCE_SUPERVISOR_CONCURRENCY__DEFAULT_CPU_WORKERS=4``).

    Environment variables with the prefix that name no setting are ignored (a
    platform sets some: Kubernetes injects ``RESOURCE_SUPERVISOR_PORT`` and more for
    a Service named ``resource-supervisor``); one that looks like a misspelt setting
    gets a :class:`ConfigWarning` with a did-you-mean.

    Args:
        path: A YAML file; ``None`` means defaults plus environment only.
        environ: The environment to read (defaults to :data:`os.environ`).
        missing_ok: When *path* does not exist, log a warning (logger
            ``resource_supervisor``) naming it and use the defaults plus the
            environment instead of raising. A file that exists but is invalid
            still raises.

    Returns:
        A frozen :class:`SupervisorSettings`.

    Raises:
        ConfigError: If the file is missing (unless *missing_ok*) or unreadable, is
            not UTF-8, not YAML, nested too deeply or not a mapping, or keys are
            unknown or have invalid values. The error names the file and every
            invalid key at once, each with its value and the reason.

    .. versionchanged:: 0.2 Unknown environment variables are ignored (with a
       :class:`ConfigWarning` for near misses) instead of refused; an empty file or
       a file without the section warns; every invalid key is reported at once.
    """
    if path is not None and missing_ok and not Path(path).exists():
        logging.getLogger("resource_supervisor").warning(
            "config file %s not found (in %s): using the default settings and the environment",
            os.fspath(path),
            Path.cwd(),
        )
        path = None
    where = str(path) if path is not None else None
    data = read_section(Path(path)) if path is not None else {}
    if where is not None:
        _check_nested_mappings(data, where)
    env = setting_variables(
        os.environ if environ is None else environ, ENV_PREFIX, _field_paths(SupervisorSettings)
    )
    from_env = {var[len(ENV_PREFIX) :].lower().replace("__", "."): var for var in env}
    token = _LOADING.set((data, env))
    try:
        return SupervisorSettings()
    except ValidationError as exc:
        raise _translate(exc, source=where, env=from_env) from None
    except RecursionError:
        # only a JSON value in the environment can still be this deep (the file's
        # depth is checked on reading)
        raise ConfigError(
            _SECTION, "<environment>", "a JSON value in the environment is nested too deeply"
        ) from None
    except SettingsError as exc:
        # a nested setting given as a malformed JSON string in the environment
        match = re.search(r'field "([^"]+)"', str(exc))
        field_name = match.group(1) if match else "<environment>"
        var = f"{ENV_PREFIX}{field_name.upper()}"
        raise ConfigError(
            f"{_SECTION}.{field_name} (environment {var})",
            env.get(var, next((v for k, v in env.items() if k.upper() == var), None)),
            f"a nested setting must be a JSON object; or set its keys one by one with {var}__<KEY>",
        ) from exc
    finally:
        _LOADING.reset(token)


def build_settings(**values: Any) -> SupervisorSettings:
    """
    Construct settings from keyword arguments, translating errors to ConfigError.

    Args:
        values: Settings by name (nested as dicts or models).

    Returns:
        A frozen :class:`SupervisorSettings`.

    Raises:
        ConfigError: If keys are unknown or values invalid (all of them at once).
    """
    try:
        return SupervisorSettings(**values)
    except ValidationError as exc:
        raise _translate(exc) from None
