"""
Environment overrides on top of the YAML data, active only inside
:func:`._config.load_settings`.

Covers: :data:`LOADING` (the context variable carrying the file's section and the
chosen environment variables while one load runs), :class:`LoadingSource` (the
settings source that merges them, environment over file, key by key) and
:class:`GivenEnvSource` (pydantic's environment source reading a given mapping).
Outside a load the source gives nothing, so ``SupervisorSettings()`` is pure defaults
and core code never reads the environment. Does not cover: which variables count as
settings (:func:`._config_input.setting_variables`).
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic.fields import FieldInfo

__all__ = ("LOADING", "GivenEnvSource", "LoadingSource", "deep_merge")


LOADING: contextvars.ContextVar[tuple[dict[str, Any], dict[str, str]] | None] = (
    contextvars.ContextVar("resource_supervisor_loading", default=None)
)


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class GivenEnvSource(EnvSettingsSource):
    """The standard environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._given = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # settings are case-insensitive: the standard source lower-cases names too
        return {name.lower(): value for name, value in self._given.items()}


class LoadingSource(PydanticBaseSettingsSource):
    """YAML data with environment overrides, active only inside load_settings()."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        loading = LOADING.get()
        if loading is None:
            return {}
        yaml_data, environ = loading
        return deep_merge(yaml_data, GivenEnvSource(self.settings_cls, environ)())
