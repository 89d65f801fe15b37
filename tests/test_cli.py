"""Tests of the command line, run as real subprocesses (plus its pure formatters)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from resource_supervisor import PressureLevel, load_settings
from resource_supervisor._cli import format_block, format_line
from tests.strategies import make_snapshot

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def cli(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m resource_supervisor ARGS`` and capture its output."""
    env = dict(os.environ)
    return subprocess.run(
        [PY, "-m", "resource_supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_help_lists_every_command() -> None:
    """--help exits 0 and names the three commands."""
    result = cli("--help")
    assert result.returncode == 0
    for command in ("watch", "check-config", "bench"):
        assert command in result.stdout


def test_console_script_is_installed() -> None:
    """The resource-supervisor console script runs the same parser."""
    script = Path(PY).parent / "resource-supervisor"
    result = subprocess.run(
        [str(script), "watch", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert "--count" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    """Without a command the parser exits 2 with usage."""
    result = cli()
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_check_config_prints_effective_settings_as_yaml(tmp_path: Path) -> None:
    """check-config prints the settings load_settings would build, as YAML."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "resource_management:\n  monitoring_interval: 5\n  concurrency:\n"
        "    default_io_workers: 3\n"
    )
    result = cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed == {"resource_management": load_settings(path).model_dump(mode="json")}
    assert printed["resource_management"]["monitoring_interval"] == 5.0
    assert printed["resource_management"]["concurrency"]["default_io_workers"] == 3


def test_check_config_of_the_example_file() -> None:
    """The shipped config.example.yaml is valid."""
    result = cli("check-config", str(ROOT / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("resource_management:")


def test_check_config_rejects_bad_input_with_status_2(tmp_path: Path) -> None:
    """An invalid value exits 2 and prints the ConfigError naming the key."""
    path = tmp_path / "bad.yaml"
    path.write_text("resource_management:\n  warning_threshold_memory: 95\n")
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert "resource_management.warning_threshold_memory" in result.stderr
    assert result.stdout == ""
    missing = cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "not found" in missing.stderr


def test_watch_prints_count_plain_lines() -> None:
    """Not on a terminal, watch prints one line per snapshot and stops after --count."""
    result = cli("watch", "--interval", "0.1", "--count", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(" mem " in line for line in lines)
    assert "\x1b[" not in result.stdout


def test_watch_rejects_bad_numbers() -> None:
    """A non-positive interval or count is refused with status 2."""
    assert cli("watch", "--interval", "0").returncode == 2
    assert cli("watch", "--count", "0").returncode == 2


def test_watch_on_a_terminal_refreshes_in_place() -> None:
    """On a TTY watch redraws its block with ANSI cursor movement."""
    master, slave = pty.openpty()
    env = dict(os.environ)
    with subprocess.Popen(
        [PY, "-m", "resource_supervisor", "watch", "--interval", "0.1", "--count", "2"],
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    ) as proc:
        os.close(slave)
        output = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, "no output from watch"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=30) == 0
    os.close(master)
    text = output.decode()
    assert text.count("resource-supervisor  ") == 2
    assert "\x1b[" in text


def test_watch_exits_cleanly_on_ctrl_c() -> None:
    """SIGINT (Ctrl-C) stops watch with status 0 and no traceback."""
    env = dict(os.environ)
    with subprocess.Popen(
        [PY, "-m", "resource_supervisor", "watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = proc.stdout.readline()  # it is running and supervising
        assert " mem " in first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # drains both pipes while it stops
        assert proc.returncode == 0, err
        assert "Traceback" not in err


def test_bench_runs_the_checkouts_benchmarks_with_quick(tmp_path: Path) -> None:
    """bench runs `python -m benchmarks` in the current directory, passing --quick on."""
    package = tmp_path / "benchmarks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import sys\nprint('bench args', sys.argv[1:])\nraise SystemExit(3)\n"
    )
    result = cli("bench", "--quick", "--only", "threads", cwd=tmp_path)
    assert result.returncode == 3
    assert "bench args ['--quick', '--only', 'threads']" in result.stdout


def test_bench_without_benchmarks_says_so(tmp_path: Path) -> None:
    """Outside a checkout, bench explains where the benchmarks live and exits 1."""
    result = cli("bench", cwd=tmp_path)
    assert result.returncode == 1
    assert "no 'benchmarks' package" in result.stderr


def test_format_line_and_block_show_the_key_figures() -> None:
    """The terminal views show level, memory percent and source, and GPU rows when present."""
    snap = make_snapshot(
        pressure_level=PressureLevel.CRITICAL,
        gpu_count=1,
        gpu0_memory_percent=42.0,
        gpu0_memory_used_bytes=2**30,
    )
    line = format_line(snap)
    assert "CRITICAL" in line
    assert f"{snap.memory_percent:5.1f}%" in line
    assert snap.memory_limit_source in line
    block = format_block(snap)
    assert "level CRITICAL" in block[0]
    assert any(row.strip().startswith("gpu0") and "42.0%" in row for row in block)
    assert all("\n" not in row for row in block)


def test_version_flag_prints_the_installed_version() -> None:
    """--version prints the program name and the installed distribution's version."""
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"resource-supervisor {version('resource-supervisor')}"


def test_check_config_shows_auto_and_what_it_resolves_to(tmp_path: Path) -> None:
    """An 'auto' worker count is printed as auto plus its value on this machine, and the
    output still loads to the same settings; explicit values get no comment."""
    from resource_supervisor._sources._cpus import usable_cpu_count

    path = tmp_path / "config.yaml"
    path.write_text("resource_management:\n  concurrency:\n    default_io_workers: 3\n")
    result = cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    cpus = usable_cpu_count()
    lines = {line.split(":")[0].strip(): line for line in result.stdout.splitlines()}
    assert lines["default_cpu_workers"].endswith(
        f"default_cpu_workers: auto  # auto = {cpus} here ({cpus} usable CPUs)"
    )
    assert lines["default_io_workers"].endswith("default_io_workers: 3")
    assert "# auto = " in lines["n_workers"]
    printed = yaml.safe_load(result.stdout)
    assert printed == {"resource_management": load_settings(path).model_dump(mode="json")}


def test_check_config_auto_follows_max_total_workers(tmp_path: Path) -> None:
    """With max_total_workers the comment shows the capped counts the supervisor uses."""
    from resource_supervisor._cli import resolved_auto

    settings = load_settings(
        None, environ={"RESOURCE_SUPERVISOR_CONCURRENCY__MAX_TOTAL_WORKERS": "2"}
    )
    notes = resolved_auto(settings)
    assert notes["concurrency.default_cpu_workers"].startswith("1 here")
    assert notes["concurrency.default_io_workers"].startswith("1 here")
    assert "max_total_workers 2" in notes["concurrency.default_io_workers"]
    explicit = load_settings(
        None,
        environ={
            "RESOURCE_SUPERVISOR_CONCURRENCY__DEFAULT_CPU_WORKERS": "2",
            "RESOURCE_SUPERVISOR_CONCURRENCY__DASK__N_WORKERS": "2",
        },
    )
    assert set(resolved_auto(explicit)) == {"concurrency.default_io_workers"}
