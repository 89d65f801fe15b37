"""Cold start: the package imports lazily, workers load only what they need, prestart."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Literal

import anyio
import pytest

from resource_supervisor import _exceptions
from resource_supervisor._config import ConcurrencySettings, SupervisorSettings
from resource_supervisor._supervisor import Supervisor
from resource_supervisor.broker import _executors, _pickling
from resource_supervisor.broker._local._lane import ProcessLane
from resource_supervisor.broker._local._launcher import WORKER_PRELOAD
from tests import _probe_workers, _workers
from tests._leaks import child_pids
from tests._settings import lane_settings

pytestmark = pytest.mark.timeout(60)

# what the service needs and a worker does not: none of it may load in a worker
HEAVY = (
    "pydantic",
    "pydantic_core",
    "pydantic_settings",
    "yaml",
    "anyio",
    "psutil",
    "ctypes",
    "multiprocessing.sharedctypes",
    # the service's own modules, named from the modules themselves so a move keeps them pinned
    ConcurrencySettings.__module__,
    Supervisor.__module__,
    ProcessLane.__module__,
    _executors.__name__,
    _pickling.__name__,  # the service's half; workers load _call_loading
    _exceptions.__name__,
)


def _heavy(modules: list[str] | set[str]) -> list[str]:
    return sorted(m for m in modules if m in HEAVY or m.split(".")[0] in HEAVY[:7])


def _run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=30, check=True
    )


def test_importing_the_package_root_loads_no_submodule() -> None:
    """``import resource_supervisor`` loads none of its modules (nor pydantic) until a
    public name is used; then the name resolves to the defining module's object."""
    probe = (
        "import sys, resource_supervisor as rs\n"
        "print(sorted(m for m in sys.modules if m.startswith(('resource_supervisor.', "
        "'pydantic', 'yaml', 'anyio'))))\n"
        "from resource_supervisor._supervisor import Supervisor\n"
        "assert rs.Supervisor is Supervisor\n"
        "print('pydantic' in sys.modules)\n"
    )
    lines = _run_python("-c", probe).stdout.splitlines()
    assert lines == ["[]", "True"]


@pytest.mark.parametrize("package", ["resource_supervisor", "resource_supervisor.broker"])
def test_every_public_name_resolves_lazily_and_star_import_works(package: str) -> None:
    """Each name in ``__all__`` resolves, ``dir()`` lists it, ``import *`` binds it, and an
    unknown name is an AttributeError (for the root and the broker package)."""
    module = importlib.import_module(package)
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # the star import itself
    for name in module.__all__:
        assert namespace[name] is getattr(module, name)
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(module, "no_such_name")  # noqa: B009 - a name that does not exist


def test_worker_entry_imports_nothing_heavy() -> None:
    """``python -X importtime`` of what the lane's forkserver preloads (the worker
    entry module and :data:`WORKER_PRELOAD`) shows none of the service's heavy
    dependencies (pydantic, YAML, anyio, psutil, ctypes) or its lane modules."""
    preload = ", ".join(("resource_supervisor.broker._local._worker", *WORKER_PRELOAD))
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {preload}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"resource_supervisor.broker._local._worker", *WORKER_PRELOAD} <= imported
    assert _heavy(imported) == []


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
async def test_a_real_worker_has_no_heavy_module_loaded(
    start_method: Literal["forkserver", "spawn"],
) -> None:
    """A worker of a running supervisor, asked for its ``sys.modules`` by a real call,
    has not loaded pydantic, YAML, anyio, psutil or the lane's service-side modules."""
    settings = SupervisorSettings(
        monitoring_enabled=False,
        concurrency=ConcurrencySettings(start_method=start_method, default_cpu_workers=1),
    )
    async with Supervisor(settings) as sup:
        modules = await sup.executors.run_in_process(_probe_workers.loaded_modules)
    assert "resource_supervisor.broker._local._worker" in modules
    assert _heavy(modules) == []


async def test_prestart_starts_one_worker_when_the_lane_starts() -> None:
    """With ``prestart_process_lane`` a worker is running before the first call, the
    call is served by it, and closing leaves nothing behind; without it none starts."""
    before = child_pids()
    async with ProcessLane(lane_settings(), max_workers=2) as cold:
        await anyio.sleep(0.2)
        assert cold.statistics().workers_live == 0
        assert child_pids() == before
    settings = lane_settings(prestart_process_lane=True)
    async with ProcessLane(settings, max_workers=2) as lane:
        with anyio.fail_after(20):  # hang guard: the worker starts in the background
            while not lane.statistics().worker_pids:  # noqa: ASYNC110 - a lane task starts it
                await anyio.sleep(0.01)
        (prestarted,) = lane.statistics().worker_pids
        assert await lane.run(_workers.pid, (), timeout=None) == prestarted
        assert lane.statistics().workers_live == 1
    assert child_pids() == before


async def test_prestarted_lane_closed_at_once_leaves_nothing() -> None:
    """Closing a prestarted lane while its worker is still starting waits for the start
    and reaps the worker and the forkserver."""
    before = child_pids()
    settings = lane_settings(prestart_process_lane=True)
    async with ProcessLane(settings, max_workers=1):
        pass
    assert child_pids() == before
