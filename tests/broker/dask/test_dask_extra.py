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

REPO = Path(__file__).resolve().parents[3]

# Installed as sitecustomize in the child: the package named by BLOCKED_PACKAGE (and
# its submodules) cannot be imported there, exactly as if it were not installed.
_BLOCKER = """
import os
import sys

BLOCKED = os.environ["BLOCKED_PACKAGE"]

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""

_CHILD = """
import asyncio
import os

from resource_supervisor import Supervisor
from resource_supervisor._config import build_settings


async def main() -> None:
    try:
        __import__(os.environ["BLOCKED_PACKAGE"])
    except ImportError:
        print("blocked")
    settings = build_settings(monitoring_enabled=False, concurrency={"backend": "dask"})
    try:
        async with Supervisor(settings):
            print("entered")
    except ImportError as exc:
        print(f"ImportError: {exc}")


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("package", "message"),
    [
        ("distributed", "concurrency.backend 'dask' needs the 'dask' extra"),
        ("cryptography", "a private Dask cluster needs the 'cryptography' package"),
    ],
)
def test_missing_extra_raises_plain_import_error(
    tmp_path: Path, package: str, message: str
) -> None:
    """
    Without `distributed`, or without `cryptography` (which makes the owned cluster's
    credentials), entering a supervisor with backend dask raises a plain ImportError
    naming the extra, which `except ImportError` catches; nothing is started.
    """
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(_BLOCKER), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        cwd=REPO,
        env={
            "PYTHONPATH": f"{tmp_path}:{REPO}",
            "PATH": "/usr/bin:/bin",
            "BLOCKED_PACKAGE": package,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "blocked"
    assert lines[1].startswith(f"ImportError: {message}")
    assert "'resource-supervisor[dask]'" in lines[1]
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
