"""
What a supervisor on the Dask backend raises when it cannot start: the plain error
(ImportError without the extra, ConfigError for an unreachable scheduler), never an
ExceptionGroup that ``except ImportError`` would miss.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resource_supervisor import Supervisor
from resource_supervisor._config import build_settings
from resource_supervisor._exceptions import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Installed as sitecustomize in the child: `distributed` (and its submodules) cannot
# be imported there, exactly as if the [dask] extra were not installed.
_BLOCKER = """
import sys

class _NoDistributed:
    def find_spec(self, name, path=None, target=None):
        if name == "distributed" or name.startswith("distributed."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoDistributed())
"""

_CHILD = """
import asyncio

from resource_supervisor import Supervisor
from resource_supervisor._config import build_settings


async def main() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("distributed blocked")
    settings = build_settings(monitoring_enabled=False, concurrency={"backend": "dask"})
    try:
        async with Supervisor(settings):
            print("entered")
    except ImportError as exc:
        print(f"ImportError: {exc}")


asyncio.run(main())
"""


def test_missing_extra_raises_plain_import_error(tmp_path: Path) -> None:
    """
    Without `distributed` importable, entering a supervisor with backend dask raises
    a plain ImportError naming the extra, which `except ImportError` catches.
    """
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(_BLOCKER), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "distributed blocked"
    assert lines[1].startswith("ImportError: concurrency.backend 'dask' needs the 'dask' extra")
    assert "entered" not in lines


async def test_unreachable_scheduler_raises_plain_config_error() -> None:
    """
    A supervisor whose Dask scheduler cannot be reached raises ConfigError itself
    from ``async with``, not wrapped in an ExceptionGroup.
    """
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))  # bound, not listening: nothing answers
        port = reserved.getsockname()[1]
        settings = build_settings(
            monitoring_enabled=False,
            concurrency={
                "backend": "dask",
                "dask": {"address": f"tcp://127.0.0.1:{port}", "connect_timeout": 0.5},
            },
        )
        with pytest.raises(ConfigError, match=r"concurrency\.dask\.address"):
            async with Supervisor(settings):
                pass
