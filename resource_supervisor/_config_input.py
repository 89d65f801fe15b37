"""
What :func:`._config.load_settings` reads before validating: the YAML file and the
environment.

Covers: reading a config file into its ``resource_management:`` section (every way a
file can be unreadable or malformed becomes a :class:`ConfigError` naming the file;
an empty file or a missing section is a :class:`ConfigWarning` naming the sections
found), the shape limits of that section (string keys, nesting depth, node count;
see :mod:`._limits`), and picking the environment variables that name a setting.

Environment rule: a ``RESOURCE_SUPERVISOR_*`` variable that names no setting is
ignored, never an error, because platforms set such variables themselves:
Kubernetes injects ``RESOURCE_SUPERVISOR_PORT=tcp://10.96.0.12:80``,
``RESOURCE_SUPERVISOR_SERVICE_HOST`` and the rest for a Service named
``resource-supervisor``. A variable that looks meant for a setting (a near miss of a
real key, or one using the ``__`` nesting only settings use) gets a
:class:`ConfigWarning` with a did-you-mean; turn those into errors with
``-W error::resource_supervisor.ConfigWarning``.

Does not cover: the settings model and the translation of validation errors
(:mod:`._config`), or the bounds of the values (:mod:`._limits`).
"""

from __future__ import annotations

import difflib
import warnings
from typing import TYPE_CHECKING, Any, Final

import yaml

from ._exceptions import ConfigError, ConfigWarning
from ._limits import MAX_CONFIG_DEPTH, MAX_CONFIG_NODES

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path

__all__ = ("SECTION", "check_section_shape", "read_section", "setting_variables", "suggest")

SECTION: Final = "resource_management"

# The C parser of libyaml when PyYAML has it: faster, and it refuses nesting beyond
# 1000 levels at once where the pure-Python one recurses until RecursionError.
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# warnings.warn stack level that points at the caller of load_settings():
# warn <- this module's function <- load_settings <- the caller
_CALLER: Final = 4


def suggest(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest of *choices*, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_section(path: Path) -> dict[str, Any]:
    """
    Read *path* and return its ``resource_management:`` section (``{}`` for none).

    Raises:
        ConfigError: If the file is missing, unreadable, not UTF-8, not YAML, nested
            too deeply, not a mapping, or its section is malformed. Names the file.
    """
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(SECTION, where, "config file not found", where) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            SECTION,
            where,
            f"the config file is not UTF-8 text ({exc.reason} at byte {exc.start})",
            where,
        ) from None
    except OSError as exc:
        raise ConfigError(SECTION, where, f"cannot read config file: {exc}", where) from exc
    try:
        document = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(SECTION, where, f"not valid YAML: {exc}", where) from exc
    except RecursionError:  # pragma: no cover - the C loader stops at depth 1000 first
        raise ConfigError(
            SECTION, where, "the YAML document is nested too deeply to read", where
        ) from None
    if document is None:
        warnings.warn(
            f"config file {where} is empty; using the defaults", ConfigWarning, stacklevel=_CALLER
        )
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            "<document>", type(document).__name__, "the YAML document must be a mapping", where
        )
    if SECTION not in document:
        found = [str(key) for key in document]
        listed = ", ".join(found) if found else "none"
        close = difflib.get_close_matches(SECTION, found, n=1, cutoff=0.6)
        hint = f"; is {close[0]!r} meant to be {SECTION!r}?" if close else ""
        warnings.warn(
            f"config file {where} has no {SECTION}: section (sections found: {listed})"
            f"{hint}; using the defaults",
            ConfigWarning,
            stacklevel=_CALLER,
        )
        return {}
    section = document[SECTION]
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(SECTION, section, "must be a mapping of settings", where)
    check_section_shape(section, where)
    return section


def check_section_shape(section: Mapping[Any, Any], where: str | None) -> None:
    """
    Check that every key of *section*, at any depth, is a string, and that the
    section is neither deeper than ``MAX_CONFIG_DEPTH`` nor larger than
    ``MAX_CONFIG_NODES`` values (aliases counted at each use, so an alias bomb or a
    self-referencing alias stops here instead of in the validator).

    Raises:
        ConfigError: Naming every non-string key at once, or the first place too deep.
    """
    problems: list[tuple[str, object, str]] = []
    visited = 0
    # iterative walk: a deep document must not exhaust the interpreter's stack here
    stack: list[tuple[object, str, int]] = [(section, SECTION, 1)]
    while stack:
        node, path, depth = stack.pop()
        visited += 1
        if visited > MAX_CONFIG_NODES:
            raise ConfigError(
                SECTION, f"more than {MAX_CONFIG_NODES} values", "the section is too large", where
            )
        if depth > MAX_CONFIG_DEPTH:
            shown = path if len(path) <= 120 else path[:117] + "..."
            raise ConfigError(shown, "...", f"nested deeper than {MAX_CONFIG_DEPTH} levels", where)
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    problems.append(
                        (
                            f"{path}.{key}",
                            key,
                            f"setting names must be strings, not {type(key).__name__}",
                        )
                    )
                    continue
                stack.append((value, f"{path}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node))
    if problems:
        problems.sort(key=lambda problem: problem[0])
        key, value, reason = problems[0]
        raise ConfigError(key, value, reason, where, tuple(problems[1:]))


def setting_variables(
    environ: Mapping[str, str], prefix: str, paths: Iterable[str]
) -> dict[str, str]:
    """
    Return the variables of *environ* that name a setting (dotted *paths*).

    Every other ``<prefix>*`` variable is ignored; one that looks meant for a
    setting gets a :class:`ConfigWarning` (see the module docstring).
    """
    known = set(paths)
    names = sorted(path.replace(".", "__").upper() for path in known)
    chosen: dict[str, str] = {}
    for var, value in environ.items():
        upper = var.upper()
        if not upper.startswith(prefix):
            continue
        rest = upper[len(prefix) :]
        if rest.lower().replace("__", ".") in known:
            chosen[var] = value
            continue
        # Stricter than YAML's did-you-mean: platform variables share the prefix.
        hint = suggest(rest, names, cutoff=0.8)
        if hint or "__" in rest:
            warnings.warn(
                f"environment variable {var} names no setting and is ignored{hint}",
                ConfigWarning,
                stacklevel=_CALLER,
            )
    return chosen
