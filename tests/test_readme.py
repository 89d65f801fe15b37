"""The README's code runs as written: the quick start and the FastAPI service."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_quick_start_runs(tmp_path: Path) -> None:
    """The quick start, saved as a script beside a config.yaml, runs and exits by itself."""
    script = tmp_path / "quick_start.py"
    script.write_text(python_blocks()[0])
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[1] in {"host", "cgroup_v1", "cgroup_v2"}
    assert "[97, 98]" in lines[1]
    assert "('cache', 'ok')" in lines[2]


def test_quick_start_without_config_file_uses_defaults_and_says_so(tmp_path: Path) -> None:
    """Run in a directory without config.yaml, the quick start still works and warns
    once that it uses the default settings."""
    script = tmp_path / "quick_start.py"
    script.write_text(python_blocks()[0])
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "config file config.yaml not found" in proc.stderr
    assert "using the default settings" in proc.stderr
    assert "('cache', 'ok')" in proc.stdout.splitlines()[2]


def test_fastapi_service_block_serves_requests(tmp_path: Path) -> None:
    """The README's FastAPI app imports, starts its supervisor and answers a request."""
    pytest.importorskip("fastapi")
    block = next(b for b in python_blocks() if "supervised_lifespan" in b and "app = " in b)
    (tmp_path / "app.py").write_text(block)
    shutil.copy(ROOT / "config.example.yaml", tmp_path / "config.yaml")
    driver = tmp_path / "drive.py"
    driver.write_text(
        "import anyio, httpx\n"
        "from app import app\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        transport = httpx.ASGITransport(app=app)\n"
        "        async with httpx.AsyncClient(transport=transport, base_url='http://t') as c:\n"
        "            r = await c.post('/tokens', params={'text': 'a b c'})\n"
        "            print(r.status_code, r.json())\n"
        "            h = await c.get('/health/resources')\n"
        "            print(h.status_code, h.json()['status'])\n"
        "if __name__ == '__main__':\n"
        "    anyio.run(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(driver)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "200 {'words': 3}" in proc.stdout
    assert "200 ok" in proc.stdout
