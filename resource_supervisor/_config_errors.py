"""
Validation errors as one :class:`ConfigError`: every invalid key at once, each with
its dotted ``resource_management.`` key, its value and the reason.

Covers: :func:`field_paths` (every dotted key of a model), :func:`translate` (a
pydantic ``ValidationError`` to a :class:`ConfigError`, union branch tags dropped, a
did-you-mean for unknown keys, the environment variable named when a value came from
there). Does not cover: reading the file (:mod:`._config_input`, whose own errors are
already :class:`ConfigError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ._config_base import RelationError
from ._config_input import SECTION as _SECTION
from ._config_input import suggest
from ._config_model import SupervisorSettings
from ._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import ValidationError

__all__ = ("field_paths", "translate")


def field_paths(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel] | None]:
    """Every dotted key path of *model*, mapped to its nested model type (or None)."""
    paths: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths[path] = annotation
            paths.update(field_paths(annotation, f"{path}."))
        else:
            paths[path] = None
    return paths


def translate(
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
        if isinstance(ctx_error, RelationError):
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
    known = field_paths(SupervisorSettings)
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
