"""
Every public module of the package, found by walking it (not from a list): it has a
docstring and a tuple ``__all__``; each name there exists, is public, is documented,
and is no module; and the modules ``tests/test_public_api.py`` checks in depth are
among those found.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from types import ModuleType

import pytest

import resource_supervisor
from tests.test_public_api import PUBLIC_MODULES


def public_module_names() -> list[str]:
    """Every module of the package no part of whose dotted path starts with ``_``."""
    walked = pkgutil.walk_packages(resource_supervisor.__path__, "resource_supervisor.")
    names = [info.name for info in walked]
    public = [n for n in names if not any(part.startswith("_") for part in n.split(".")[1:])]
    return ["resource_supervisor", *sorted(public)]


PUBLIC = public_module_names()


def attribute_docstrings(module: ModuleType) -> dict[str, str]:
    """``NAME = value`` (or ``NAME: T = value``) followed by a string: ``{NAME: string}``."""
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    for before, after in zip(tree.body, tree.body[1:], strict=False):
        targets = before.targets if isinstance(before, ast.Assign) else []
        if isinstance(before, ast.AnnAssign):
            targets = [before.target]
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            for target in targets:
                if isinstance(target, ast.Name):
                    found[target.id] = after.value.value
    return found


def defining_module(module: ModuleType, name: str) -> ModuleType:
    """The module whose source assigns *name*: *module*, or the one it imports it from."""
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom) and any(
            (alias.asname or alias.name) == name for alias in node.names
        ):
            source = "." * node.level + (node.module or "")
            package = module.__name__ if hasattr(module, "__path__") else module.__package__
            return importlib.import_module(importlib.util.resolve_name(source, package))
    return module


def documentation(module: ModuleType, name: str) -> str:
    """The docstring of ``module.name``: its own for classes and functions, else the
    attribute docstring where it is assigned."""
    value = getattr(module, name)
    if inspect.isclass(value) or inspect.isroutine(value):
        return inspect.getdoc(value) or ""
    return attribute_docstrings(defining_module(module, name)).get(name, "")


def test_the_walk_finds_the_modules_checked_in_depth() -> None:
    """Every module the public-API test checks in depth is found by the walk, and the walk
    finds the integrations too (it reaches sub-packages, not only the root)."""
    assert set(PUBLIC_MODULES) <= set(PUBLIC)
    assert "resource_supervisor.integrations.prometheus" in PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_module_has_a_docstring_and_a_tuple_all(name: str) -> None:
    """A public module says what it is and declares its public names as a tuple (ruff's
    RUF022 keeps it sorted)."""
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no docstring"
    assert isinstance(getattr(module, "__all__", None), tuple), f"{name} has no tuple __all__"


@pytest.mark.parametrize("name", PUBLIC)
def test_every_name_in_all_exists_is_public_and_is_documented(name: str) -> None:
    """Each name in ``__all__`` is an attribute of the module, is not underscored, is no
    module (a private module is never exported by name) and has a docstring: a class's or
    function's own, or for a constant or alias the string right after its assignment."""
    module = importlib.import_module(name)
    for attr in module.__all__:
        assert not attr.startswith("_"), f"{name}.{attr} is private"
        assert hasattr(module, attr), f"{name}.{attr} is listed but missing"
        assert not isinstance(getattr(module, attr), ModuleType), f"{name}.{attr} is a module"
        assert documentation(module, attr).strip(), f"{name}.{attr} is not documented"
