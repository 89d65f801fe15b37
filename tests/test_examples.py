"""Run the examples as a user would: the demo (short) and the asyncio pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_shows_warning_a_critical_episode_with_shedding_and_recovery(
    tmp_path: Path,
) -> None:
    """make demo's job with --duration 5: exits 0, streams snapshots, crosses WARNING, has
    one CRITICAL episode in which clients get 503s, returns to NORMAL, prints its summary
    and writes a PNG plot of the run."""
    png = tmp_path / "run.png"
    result = run_example(
        str(EXAMPLES / "demo.py"), "--duration", "5", "--plot", str(png), timeout=140
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    summary = out[out.index("summary") :]
    for label in ("requests", "latency", "cleanups run", "max level", "bytes freed"):
        assert label in summary
    assert "p50" in summary
    assert "p99" in summary
    assert "errors 0" in summary
    assert out.count(" mem ") >= 3  # the live stream printed snapshot lines
    assert "service on http://127.0.0.1:" in out
    assert "level NORMAL -> WARNING" in out, out
    assert "-> CRITICAL" in out
    assert "level CRITICAL -> NORMAL" in out  # the recovery
    assert "cleanup (automatic, aggressive)" in out
    shed = int(summary.split("shed ")[1].split(",")[0])
    assert shed > 0  # load shedding answered 503s during the episode
    assert "max level       CRITICAL" in summary
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot            {png}" in summary
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(90)
def test_asyncio_pipeline_finishes_by_itself() -> None:
    """The web-free pipeline answers questions, prints the stream and a summary, exits 0."""
    result = run_example(str(EXAMPLES / "asyncio_pipeline.py"), "--duration", "1.5", timeout=80)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "indexed 20 documents" in out
    assert "summary" in out
    answered = next(line for line in out.splitlines() if "answered" in line)
    assert int(answered.split()[1]) > 0
    assert "Traceback" not in result.stderr


def test_service_module_imports_without_side_effects() -> None:
    """Importing the service example builds nothing and starts nothing."""
    code = (
        "import sys; sys.path.insert(0, 'examples')\n"
        "import threading, fastapi_rag_service as m\n"
        "assert threading.active_count() == 1\n"
        "print(m.embed('hello world') == m.embed('hello world'), len(m.embed('x')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "64"]
