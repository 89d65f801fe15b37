"""The public surface: __all__ matches the modules, and docstring rules hold."""

from __future__ import annotations

import importlib
import inspect
import pickle
from types import ModuleType
from typing import TypeVar, TypeVarTuple

import pytest

import resource_supervisor

PUBLIC_MODULES = [
    "resource_supervisor",
    "resource_supervisor.compat",
    "resource_supervisor.testing",
    "resource_supervisor.broker",
]
# classes reached through the supervisor's properties rather than imported by name
REACHABLE = [
    ("resource_supervisor.broker._executors", "Executors"),
    ("resource_supervisor._sessions", "SessionRegistry"),
    ("resource_supervisor._memory", "MemoryAdvisor"),
    ("resource_supervisor._streams", "Subscription"),
    ("resource_supervisor._sources._gpu", "GpuSource"),
]


def public_objects() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        found += [(f"{name}.{attr}", getattr(module, attr)) for attr in module.__all__]
    for module_name, attr in REACHABLE:
        found.append((f"{module_name}.{attr}", getattr(importlib.import_module(module_name), attr)))
    return found


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    """__all__ is a sorted tuple naming every public attribute the module defines or re-exports."""
    module = importlib.import_module(name)
    assert isinstance(module.__all__, tuple)
    assert list(module.__all__) == sorted(module.__all__)
    for attr in module.__all__:
        assert hasattr(module, attr), attr
    # the root re-exports only; other public modules must list what they define
    public = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and not isinstance(value, ModuleType | TypeVar | TypeVarTuple)
        and attr not in {"annotations", "TYPE_CHECKING"}
        and (
            getattr(value, "__module__", "").startswith("resource_supervisor")
            if name == "resource_supervisor"
            else getattr(value, "__module__", None) == name
        )
    }
    assert public <= set(module.__all__), public - set(module.__all__)


def test_contract_names_are_exported() -> None:
    """The names DESIGN.md promises are importable from the package root."""
    for name in (
        "Supervisor",
        "load_settings",
        "SupervisorSettings",
        "MetricsSnapshot",
        "PressureLevel",
        "CleanupRequest",
        "CleanupReport",
        "Cleanup",
        "ResourceSupervisorError",
        "ConfigError",
        "WorkerCrashedError",
        "OverloadedError",
    ):
        assert name in resource_supervisor.__all__


def test_every_public_object_has_a_docstring() -> None:
    """Every exported class and function is documented, and so are their public methods."""
    missing = []
    for qualname, obj in public_objects():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not inspect.getdoc(obj):
            missing.append(qualname)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in {"__aenter__", "__aexit__"}:
                    continue
                if inspect.isfunction(member) and not member.__doc__:
                    missing.append(f"{qualname}.{attr}")
    assert missing == []


def test_every_public_async_def_documents_cancellation() -> None:
    """Each public coroutine function says what cancellation does (STYLE.md section 4)."""
    missing = []
    for qualname, obj in public_objects():
        members: list[tuple[str, object]] = []
        if inspect.iscoroutinefunction(obj):
            members.append((qualname, obj))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in {"__aenter__", "__aexit__"}:
                    continue
                if inspect.iscoroutinefunction(member):
                    members.append((f"{qualname}.{attr}", member))
        missing += [q for q, m in members if "Cancellation:" not in (inspect.getdoc(m) or "")]
    assert missing == []


@pytest.mark.parametrize(
    "error",
    [
        getattr(resource_supervisor, n)
        for n in resource_supervisor.__all__
        if n.endswith("Error") and n not in {"ResourceSupervisorError", "ExecutorError"}
    ],
)
def test_exported_errors_descend_from_root_and_pickle(error: type[Exception]) -> None:
    """Every exported error is a ResourceSupervisorError and survives pickle."""
    assert issubclass(error, resource_supervisor.ResourceSupervisorError)
    params = inspect.signature(error.__init__).parameters
    args = ["x" if p.annotation in {"str", str} else 1 for p in list(params.values())[1:]]
    try:
        instance = error(*args)
    except TypeError:
        instance = error("x", 1, 1, "x")
    again = pickle.loads(pickle.dumps(instance))
    assert str(again) == str(instance)


def test_py_typed_is_shipped() -> None:
    """The package ships py.typed."""
    from pathlib import Path

    assert (Path(resource_supervisor.__file__).parent / "py.typed").exists()
