"""Tests for settings: YAML, environment overrides and validation errors."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._config import (
    ENV_PREFIX,
    SupervisorSettings,
    build_settings,
    load_settings,
)
from resource_supervisor._exceptions import ConfigError, ResourceSupervisorError

if TYPE_CHECKING:
    from pathlib import Path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_match_the_contract() -> None:
    """Defaults are the documented seed values, and direct construction ignores env."""
    s = SupervisorSettings()
    assert s.monitoring_interval == 30
    assert s.aggressive_threshold_memory == 85
    assert s.warning_threshold_memory == 75
    assert s.warning_threshold_cpu == 80
    assert s.monitoring_enabled is True
    assert s.concurrency.default_cpu_workers == "auto"
    assert s.concurrency.default_io_workers == "auto"
    assert s.concurrency.max_total_workers is None


def test_direct_construction_never_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Core code never reads the environment: only load_settings() applies env overrides."""
    monkeypatch.setenv(f"{ENV_PREFIX}MONITORING_INTERVAL", "3")
    assert SupervisorSettings().monitoring_interval == 30
    assert load_settings().monitoring_interval == 3


def test_yaml_section_is_read(tmp_path: Path) -> None:
    """The resource_management section of a YAML file sets the keys, nested ones too."""
    path = write(
        tmp_path,
        """
        other_section: {x: 1}
        resource_management:
          monitoring_interval: 5
          warning_threshold_memory: 60
          aggressive_threshold_memory: 70
          concurrency:
            default_cpu_workers: 3
            default_io_workers: auto
            max_total_workers: 8
        """,
    )
    s = load_settings(path, environ={})
    assert s.monitoring_interval == 5
    assert (s.warning_threshold_memory, s.aggressive_threshold_memory) == (60, 70)
    assert s.concurrency.default_cpu_workers == 3
    assert s.concurrency.max_total_workers == 8


def test_env_overrides_yaml_with_nesting(tmp_path: Path) -> None:
    """Environment beats YAML; `__` reaches nested keys and leaves YAML siblings alone."""
    path = write(
        tmp_path,
        """
        resource_management:
          monitoring_interval: 5
          concurrency: {default_cpu_workers: 3, queue_limit: 7}
        """,
    )
    s = load_settings(
        path,
        environ={
            f"{ENV_PREFIX}MONITORING_INTERVAL": "2.5",
            f"{ENV_PREFIX}CONCURRENCY__DEFAULT_CPU_WORKERS": "6",
            f"{ENV_PREFIX}CONCURRENCY__DASK__RETRIES": "2",
            "UNRELATED": "x",
        },
    )
    assert s.monitoring_interval == 2.5
    assert s.concurrency.default_cpu_workers == 6
    assert s.concurrency.queue_limit == 7
    assert s.concurrency.dask.retries == 2


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are built."""
    s = SupervisorSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.monitoring_interval = 1


@pytest.mark.parametrize(
    ("yaml_text", "key", "reason"),
    [
        ("monitoring_interval: 0", "resource_management.monitoring_interval", "greater than 0"),
        ("monitoring_interval: -1", "resource_management.monitoring_interval", "greater than 0"),
        (
            "warning_threshold_memory: 90",
            "resource_management.warning_threshold_memory",
            "below aggressive",
        ),
        (
            "aggressive_threshold_memory: 101",
            "resource_management.aggressive_threshold_memory",
            "less than or equal to 100",
        ),
        ("warning_threshold_cpu: -5", "resource_management.warning_threshold_cpu", "greater"),
        (
            "concurrency: {default_cpu_workers: lots}",
            "resource_management.concurrency.default_cpu_workers",
            '"auto" or a positive integer',
        ),
        (
            "concurrency: {default_io_workers: 0}",
            "resource_management.concurrency.default_io_workers",
            "positive integer",
        ),
        (
            "concurrency: {default_io_workers: true}",
            "resource_management.concurrency.default_io_workers",
            "positive integer",
        ),
        (
            "concurrency: {max_total_workers: 0}",
            "resource_management.concurrency.max_total_workers",
            "greater than or equal to 1",
        ),
        (
            "monitoring_intervall: 3",
            "resource_management.monitoring_intervall",
            "monitoring_interval",
        ),
        (
            "concurrency: {default_cpu_wrkers: 2}",
            "resource_management.concurrency.default_cpu_wrkers",
            "did you mean 'default_cpu_workers'",
        ),
        ("concurrency: {backend: ray}", "resource_management.concurrency.backend", "'local'"),
        (
            "concurrency: {dask: {address: 'tcp://a:1', scheduler_file: /x}}",
            "resource_management.concurrency.dask",
            "either address or scheduler_file",
        ),
        ("concurrency: 3", "resource_management.concurrency", "mapping"),
        ("hysteresis: 80", "resource_management.hysteresis", "less than or equal to 50"),
        (
            "session_ttl: 10\n  session_ttl_aggressive: 20",
            "resource_management.session_ttl_aggressive",
            "must not exceed session_ttl",
        ),
    ],
)
def test_invalid_yaml_names_key_value_and_reason(
    tmp_path: Path, yaml_text: str, key: str, reason: str
) -> None:
    """Every invalid value raises ConfigError naming the dotted key, the value and why."""
    path = write(tmp_path, f"resource_management:\n  {yaml_text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    err = info.value
    assert err.key == key
    assert reason in str(err)
    assert str(err).startswith(f"{key}: invalid value")


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    """A missing file raises ConfigError naming the path."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_settings(missing, environ={})
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    """A YAML document that is not a mapping raises ConfigError."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(path, environ={})


def test_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    """A resource_management section that is a list raises ConfigError naming it."""
    path = write(tmp_path, "resource_management: [1, 2]\n")
    with pytest.raises(ConfigError, match="resource_management"):
        load_settings(path, environ={})


def test_broken_yaml(tmp_path: Path) -> None:
    """Unparseable YAML raises ConfigError, not a yaml error."""
    path = write(tmp_path, "resource_management: {a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, environ={})


def test_empty_file_and_empty_section_give_defaults(tmp_path: Path) -> None:
    """An empty file or section means defaults."""
    assert load_settings(write(tmp_path, ""), environ={}) == SupervisorSettings()
    assert load_settings(write(tmp_path, "resource_management:\n"), environ={}) == (
        SupervisorSettings()
    )


def test_unknown_env_key_is_rejected_with_suggestion() -> None:
    """A RESOURCE_SUPERVISOR_ variable naming no setting is an error with a did-you-mean."""
    with pytest.raises(ConfigError, match="did you mean 'MONITORING_INTERVAL'") as info:
        load_settings(environ={f"{ENV_PREFIX}MONITORNG_INTERVAL": "1"})
    assert f"{ENV_PREFIX}MONITORNG_INTERVAL" in info.value.key


def test_invalid_env_value_names_key() -> None:
    """A bad environment value is reported under its dotted key."""
    with pytest.raises(ConfigError) as info:
        load_settings(environ={f"{ENV_PREFIX}CONCURRENCY__DEFAULT_CPU_WORKERS": "many"})
    assert info.value.key == "resource_management.concurrency.default_cpu_workers"
    assert info.value.value == "many"


def test_config_error_is_value_error_and_pickles() -> None:
    """ConfigError is both a ValueError and a ResourceSupervisorError."""
    with pytest.raises(ValueError, match="monitoring_interval"):
        build_settings(monitoring_interval=0)
    with pytest.raises(ResourceSupervisorError):
        build_settings(warning_threshold_cpu=200)


def test_gpu_thresholds_relation() -> None:
    """The GPU warning threshold must be below the aggressive one."""
    with pytest.raises(ConfigError, match="warning_threshold_gpu_memory"):
        build_settings(warning_threshold_gpu_memory=90, aggressive_threshold_gpu_memory=80)
    s = build_settings(warning_threshold_gpu_memory=70, aggressive_threshold_gpu_memory=90)
    assert s.aggressive_threshold_gpu_memory == 90


def test_example_config_is_valid_and_complete() -> None:
    """config.example.yaml loads, and documents every setting the model has."""
    from pathlib import Path

    from resource_supervisor._config import _field_paths

    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    load_settings(example, environ={})
    document = yaml.safe_load(example.read_text())["resource_management"]

    def flatten(node: dict[str, Any], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for key, value in node.items():
            keys.add(prefix + key)
            if isinstance(value, dict):
                keys |= flatten(value, f"{prefix}{key}.")
        return keys

    assert set(_field_paths(SupervisorSettings)) == flatten(document)


# -- fuzz: every invalid input is a ConfigError naming a key ------------------------

_KEYS = st.sampled_from(
    [
        "monitoring_interval",
        "warning_threshold_memory",
        "aggressive_threshold_memory",
        "warning_threshold_cpu",
        "monitoring_enabled",
        "hysteresis",
        "cleanup_cooldown",
        "session_ttl",
        "stream_buffer",
        "concurrency",
        "bogus_key",
    ]
)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(section=st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_fuzzed_yaml_only_raises_config_error(section: dict[str, Any]) -> None:
    """Any YAML section either loads or raises ConfigError with a resource_management key."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump({"resource_management": section}))
        error: ConfigError | None = None
        try:
            load_settings(path, environ={})
        except ConfigError as err:
            error = err
        if error is not None:
            assert error.key.startswith(("resource_management", "<document>"))


@given(
    name=st.sampled_from(
        [
            "MONITORING_INTERVAL",
            "WARNING_THRESHOLD_MEMORY",
            "CONCURRENCY__DEFAULT_CPU_WORKERS",
            "CONCURRENCY__QUEUE_LIMIT",
            "CONCURRENCY__DASK__RETRIES",
            "CONCURRENCY",
            "NOPE",
        ]
    ),
    value=st.text(max_size=12),
)
def test_fuzzed_env_only_raises_config_error(name: str, value: str) -> None:
    """Any environment override either loads or raises ConfigError naming a key."""
    error: ConfigError | None = None
    try:
        load_settings(environ={f"{ENV_PREFIX}{name}": value})
    except ConfigError as err:
        error = err
    if error is not None:
        assert error.key.startswith("resource_management")


def test_missing_ok_falls_back_to_defaults_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """missing_ok=True: a missing file logs one warning naming it and gives the defaults
    plus the environment; without it the same call raises ConfigError."""
    missing = tmp_path / "config.yaml"
    env = {f"{ENV_PREFIX}MONITORING_INTERVAL": "7"}
    with caplog.at_level("WARNING", logger="resource_supervisor"):
        settings = load_settings(missing, environ=env, missing_ok=True)
    assert settings == build_settings(monitoring_interval=7)
    [record] = caplog.records
    assert str(missing) in record.getMessage()
    assert "default settings" in record.getMessage()
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(missing, environ=env)


def test_missing_ok_still_rejects_an_invalid_file(tmp_path: Path) -> None:
    """missing_ok covers a missing file only: an existing invalid one still raises."""
    path = write(tmp_path, "resource_management:\n  monitoring_interval: -1\n")
    with pytest.raises(ConfigError, match="monitoring_interval"):
        load_settings(path, environ={}, missing_ok=True)
