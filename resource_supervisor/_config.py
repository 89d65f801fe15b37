"""
Settings: the ``resource_management:`` YAML section, environment overrides, validation.

Covers: :func:`load_settings` (YAML file, then ``RESOURCE_SUPERVISOR_*`` environment
variables with ``__`` for nesting) and :func:`build_settings` (keyword arguments), both
raising :class:`ConfigError` naming the dotted key, the value and the reason; and the
public names of the settings, defined one concept a module: the top level
(:mod:`._config_model`), the nested sections (:mod:`._config_sections`,
:mod:`._config_dask`), their shared pieces (:mod:`._config_base`), the environment
overrides (:mod:`._config_overrides`), reading the file (:mod:`._config_input`) and
reporting errors (:mod:`._config_errors`). Does not cover: what the settings mean at
run time (see :mod:`._policy`, :mod:`._supervisor`, :mod:`.broker`).

Precedence, highest first: keyword arguments given to ``SupervisorSettings(...)``,
environment variables (only inside :func:`load_settings`), the YAML file, defaults.
Core code never reads the environment: constructing ``SupervisorSettings()``
directly gives pure defaults.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from ._config_dask import DaskSecuritySettings, DaskSettings
from ._config_errors import field_paths as _field_paths
from ._config_errors import translate as _translate
from ._config_input import SECTION as _SECTION
from ._config_input import read_section, setting_variables
from ._config_model import ENV_PREFIX, SupervisorSettings
from ._config_overrides import LOADING as _LOADING
from ._config_sections import AdmissionSettings, ConcurrencySettings, MultiprocessSettings
from ._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

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
