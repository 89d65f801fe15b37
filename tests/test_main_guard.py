"""A script without ``if __name__ == "__main__":`` fails once, clearly, instead of re-running."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING

import pytest

from resource_supervisor._main_guard import (
    EXIT_STATUS,
    MESSAGE,
    UnguardedMainError,
    check_marker,
    clear_marker,
    refuse_in_worker_bootstrap,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)

SCRIPT = """
import asyncio
import resource_supervisor as rs


def square(x):
    return x * x


async def main():
    concurrency = rs.ConcurrencySettings(start_method={method!r}, default_cpu_workers=4)
    settings = rs.SupervisorSettings(monitoring_enabled=False, concurrency=concurrency)
    async with rs.Supervisor(settings) as sup:
        for _ in range(2):  # a second round must not start workers again
            calls = [sup.executors.run_in_process(square, i) for i in range(12)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [r for r in results if isinstance(r, rs.WorkerCrashedError)]
            named = all('if __name__ == "__main__":' in str(e) for e in errors)
            print("failed", len(errors), "of", len(results), "named the fix", named)
            if not named:  # say what they did say
                print(sorted({{repr(e)[:300] for e in errors}}))
            if not errors:
                print("results", results)

{run}
"""
UNGUARDED = "asyncio.run(main())"
GUARDED = 'if __name__ == "__main__":\n    asyncio.run(main())'
FIRST_LINE = MESSAGE.split(" {main!r}")[0]


def _run_script(tmp_path: Path, method: str, run: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "service.py"
    script.write_text(SCRIPT.format(method=method, run=run))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_unguarded_script_fails_once_with_the_fix(tmp_path: Path, method: str) -> None:
    """
    A real script without the guard, with 4 workers and 12 calls twice: every call fails
    with WorkerCrashedError naming the guard; the message is printed once, with no
    traceback storm, no leaked semaphores and no marker file left; the script ends.
    """
    result = _run_script(tmp_path, method, UNGUARDED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["failed 12 of 12 named the fix True"] * 2
    assert result.stderr.count(FIRST_LINE) == 1
    assert "Traceback" not in result.stderr
    assert "leaked" not in result.stderr
    assert len(result.stderr.splitlines()) < 12  # the message, and at most a CPU warning
    assert list((tmp_path / "tmp").iterdir()) == []


def test_guarded_script_runs_normally(tmp_path: Path) -> None:
    """The same script with the guard (as the README shows) gets its results."""
    result = _run_script(tmp_path, "spawn", GUARDED)
    assert result.returncode == 0, result.stderr
    squares = [i * i for i in range(12)]
    assert (
        result.stdout.splitlines()
        == ["failed 0 of 12 named the fix True", f"results {squares}"] * 2
    )
    assert FIRST_LINE not in result.stderr


def test_the_service_itself_is_never_refused() -> None:
    """Outside a bootstrapping worker the check does nothing, and no marker is there."""
    refuse_in_worker_bootstrap()
    check_marker()


def test_unguarded_main_error_pickles_and_names_the_fix() -> None:
    """The error names the script and the guard, and survives pickling."""
    error = UnguardedMainError("/srv/app.py")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, UnguardedMainError)
    assert copy.main == "/srv/app.py"
    assert str(copy) == str(error)
    assert "'/srv/app.py'" in str(error)
    assert 'if __name__ == "__main__":' in str(error)


def test_a_bootstrapping_worker_exits_and_only_the_first_one_speaks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """
    With the flag multiprocessing sets while a child imports the main module, starting a
    supervisor exits with status 78; the first refusal prints the fix and leaves the
    marker, the next one is quiet; the service sees the marker until it clears it.
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    for _ in range(2):
        with pytest.raises(SystemExit) as info:
            refuse_in_worker_bootstrap()
        assert info.value.code == EXIT_STATUS
    assert capsys.readouterr().err.count(FIRST_LINE) == 1
    monkeypatch.delattr(multiprocessing.current_process(), "_inheriting")
    with pytest.raises(UnguardedMainError, match="guard"):
        check_marker()
    clear_marker()
    check_marker()
    assert list(tmp_path.iterdir()) == []
