"""Tests for settings: YAML, environment overrides and validation errors."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any, cast

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resource_supervisor._config import (
    ENV_PREFIX,
    SupervisorSettings,
    build_settings,
    load_settings,
)
from resource_supervisor._exceptions import ConfigError, ConfigWarning, ResourceSupervisorError

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
        ("monitoring_interval: 0", "resource_management.monitoring_interval", "0.001"),
        ("monitoring_interval: -1", "resource_management.monitoring_interval", "0.001"),
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


def test_empty_file_warns_and_empty_section_gives_defaults(tmp_path: Path) -> None:
    """An empty file warns that the defaults are used; an explicitly empty section does not."""
    path = write(tmp_path, "")
    with pytest.warns(ConfigWarning, match="is empty; using the defaults") as record:
        assert load_settings(path, environ={}) == SupervisorSettings()
    assert str(path) in str(record[0].message)
    assert load_settings(write(tmp_path, "resource_management:\n"), environ={}) == (
        SupervisorSettings()
    )


def test_misspelt_section_warns_naming_the_sections_found(tmp_path: Path) -> None:
    """A file without the section warns, naming the file, the sections found and the near miss."""
    path = write(tmp_path, "resource_managment:\n  monitoring_interval: 5\nlogging: {}\n")
    with pytest.warns(ConfigWarning) as record:
        settings = load_settings(path, environ={})
    assert settings == SupervisorSettings()
    message = str(record[0].message)
    assert str(path) in message
    assert "sections found: resource_managment, logging" in message
    assert "'resource_managment' meant to be 'resource_management'" in message


def test_unknown_env_near_miss_warns_with_suggestion() -> None:
    """A near miss of a setting in the environment is ignored with a did-you-mean warning."""
    with pytest.warns(ConfigWarning, match="did you mean 'MONITORING_INTERVAL'") as record:
        settings = load_settings(environ={f"{ENV_PREFIX}MONITORNG_INTERVAL": "1"})
    assert settings.monitoring_interval == 30
    assert f"{ENV_PREFIX}MONITORNG_INTERVAL" in str(record[0].message)
    with pytest.warns(ConfigWarning, match="CONCURRENCY__QUEUE_LIMT names no setting"):
        load_settings(environ={f"{ENV_PREFIX}CONCURRENCY__QUEUE_LIMT": "1"})


#: What Kubernetes injects into every pod of a namespace with a Service named
#: ``resource-supervisor`` (port 80, named ``http``), beside a real override.
KUBERNETES_ENV = {
    "RESOURCE_SUPERVISOR_PORT": "tcp://10.96.0.12:80",
    "RESOURCE_SUPERVISOR_PORT_80_TCP": "tcp://10.96.0.12:80",
    "RESOURCE_SUPERVISOR_PORT_80_TCP_ADDR": "10.96.0.12",
    "RESOURCE_SUPERVISOR_PORT_80_TCP_PORT": "80",
    "RESOURCE_SUPERVISOR_PORT_80_TCP_PROTO": "tcp",
    "RESOURCE_SUPERVISOR_SERVICE_HOST": "10.96.0.12",
    "RESOURCE_SUPERVISOR_SERVICE_PORT": "80",
    "RESOURCE_SUPERVISOR_SERVICE_PORT_HTTP": "80",
    "RESOURCE_SUPERVISOR_MONITORING_INTERVAL": "5",
}


def test_kubernetes_service_variables_never_stop_the_app(tmp_path: Path) -> None:
    """Service-discovery variables sharing the prefix are ignored without even a warning."""
    path = write(tmp_path, "resource_management:\n  warning_threshold_memory: 70\n")
    settings = load_settings(path, environ=KUBERNETES_ENV)  # filterwarnings=error: none
    assert settings.monitoring_interval == 5
    assert settings.warning_threshold_memory == 70


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

    from resource_supervisor._config_errors import field_paths

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

    assert set(field_paths(SupervisorSettings)) == flatten(document)


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


# -- files real deployments send ------------------------------------------------------


def test_non_string_keys_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    """Integer and null keys are all reported at once, naming the file, never a TypeError."""
    path = write(
        tmp_path,
        """
        resource_management:
          1: 2
          null: 3
          concurrency: {5: x}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    err = info.value
    assert err.source == str(path)
    assert str(path) in str(err)
    assert {key for key, _, _ in err.problems} == {
        "resource_management.1",
        "resource_management.None",
        "resource_management.concurrency.5",
    }
    assert "setting names must be strings, not int" in str(err)


def test_non_utf8_file_is_config_error_naming_the_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 raises ConfigError naming it, not UnicodeDecodeError."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("resource_management:\n  # réglages\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(path, environ={})
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 3000 + "]" * 3000, "nest"),
        ("resource_management: " + "{a: " * 40 + "1" + "}" * 40, "nested deeper than 32"),
        ("resource_management: &a {concurrency: *a}\n", "nested deeper than 32"),
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "resource_management: {concurrency: {dask: {address: [*d, *d, *d, *d, *d]}}}\n",
            "too large",
        ),
    ],
    ids=["deep-document", "deep-section", "self-alias", "alias-bomb"],
)
def test_deep_or_huge_yaml_is_config_error_naming_the_file(
    tmp_path: Path, text: str, reason: str
) -> None:
    """Deep nesting, a self-referencing alias or an alias bomb is a ConfigError, not a crash."""
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as info:
        load_settings(path, environ={})
    assert info.value.source == str(path)


def test_deep_json_in_environment_is_config_error() -> None:
    """A nested setting given as absurdly deep JSON in the environment is a ConfigError."""
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(environ={f"{ENV_PREFIX}CONCURRENCY": "[" * 50_000 + "]" * 50_000})


def test_every_invalid_key_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """All invalid values, unknown keys and failed relations of a file come in one error."""
    path = write(
        tmp_path,
        """
        resource_management:
          monitoring_interval: .inf
          cleanup_handler_timeout: -1
          monitoring_intervall: 3
          concurrency: {queue_limit: lots}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    keys = [key for key, _, _ in info.value.problems]
    assert sorted(keys) == [
        "resource_management.cleanup_handler_timeout",
        "resource_management.concurrency.queue_limit",
        "resource_management.monitoring_interval",
        "resource_management.monitoring_intervall",
    ]
    text = str(info.value)
    assert all(key in text for key in keys)
    assert "3 more" in text
    relations = write(
        tmp_path,
        """
        resource_management:
          warning_threshold_memory: 95
          session_ttl: 10
          session_ttl_aggressive: 20
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(relations, environ={})
    assert [key for key, _, _ in info.value.problems] == [
        "resource_management.warning_threshold_memory",
        "resource_management.session_ttl_aggressive",
    ]


def test_env_value_error_names_its_variable(tmp_path: Path) -> None:
    """An invalid value from the environment says which variable set it."""
    var = f"{ENV_PREFIX}CONCURRENCY__QUEUE_LIMIT"
    with pytest.raises(ConfigError, match=f"from environment variable {var}") as info:
        load_settings(write(tmp_path, "resource_management: {}\n"), environ={var: "x"})
    assert info.value.key == "resource_management.concurrency.queue_limit"


# -- every numeric key has sane bounds ------------------------------------------------


def _numeric_leaves() -> dict[str, tuple[float, float]]:
    """Every numeric setting, dotted, with its (lower, upper) bound from the model."""
    import annotated_types as at

    from resource_supervisor._config_errors import field_paths
    from resource_supervisor._limits import MAX_WORKERS

    leaves: dict[str, tuple[float, float]] = {}
    for path, nested in field_paths(SupervisorSettings).items():
        if nested is not None:
            continue
        model: Any = SupervisorSettings
        *parents, name = path.split(".")
        for parent in parents:
            model = model.model_fields[parent].annotation
        info = model.model_fields[name]
        text = str(info.annotation)
        if "int" not in text and "float" not in text:
            continue
        if "Literal['auto']" in text:  # worker counts: bounded by the "auto" validator
            leaves[path] = (1, MAX_WORKERS)
            continue
        low = high = None
        metadata = list(info.metadata)
        for arg in getattr(info.annotation, "__args__", ()):
            metadata.extend(getattr(arg, "__metadata__", ()))
        for item in metadata:
            for constraint in getattr(item, "metadata", [item]):
                if isinstance(constraint, at.Ge | at.Gt):
                    low = constraint.ge if isinstance(constraint, at.Ge) else constraint.gt
                if isinstance(constraint, at.Le | at.Lt):
                    high = constraint.le if isinstance(constraint, at.Le) else constraint.lt
        assert low is not None, f"{path} has no lower bound"
        assert high is not None, f"{path} has no upper bound"
        leaves[path] = (float(cast("float", low)), float(cast("float", high)))
    return leaves


def _nest(path: str, value: object) -> dict[str, Any]:
    *parents, name = path.split(".")
    node: dict[str, Any] = {name: value}
    for parent in reversed(parents):
        node = {parent: node}
    return node


def test_every_numeric_setting_has_both_bounds() -> None:
    """Each numeric key has a finite lower and upper bound (checked over the whole model)."""
    leaves = _numeric_leaves()
    assert "monitoring_interval" in leaves
    assert "concurrency.dask.poll_interval" in leaves
    for path, (low, high) in leaves.items():
        assert float("-inf") < low < high < float("inf"), path


@pytest.mark.parametrize("path", sorted(_numeric_leaves()))
@pytest.mark.parametrize("bad", ["inf", "nan", "absurd", "below"])
def test_every_numeric_setting_rejects_inf_nan_and_absurd(path: str, bad: str) -> None:
    """Infinite, NaN, beyond-bound values are a ConfigError naming exactly that key."""
    low, high = _numeric_leaves()[path]
    value: object = {
        "inf": float("inf"),
        "nan": float("nan"),
        "absurd": high * 1000 + 1,
        "below": low - 1,
    }[bad]
    with pytest.raises(ConfigError) as info:
        build_settings(**_nest(path, value))
    assert info.value.key == f"resource_management.{path}"


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("cleanup_handler_timeout: .inf", "cleanup_handler_timeout"),
        ("monitoring_interval: 1e-9", "monitoring_interval"),
        ("monitoring_interval: 1.0e-9", "monitoring_interval"),
        ("monitoring_interval: .inf", "monitoring_interval"),
        ("provider_timeout: .nan", "provider_timeout"),
        ("concurrency: {default_io_workers: 100000000}", "concurrency.default_io_workers"),
        ("concurrency: {queue_limit: 1.0e+300}", "concurrency.queue_limit"),
    ],
)
def test_reported_absurd_yaml_values_are_rejected(tmp_path: Path, yaml_text: str, key: str) -> None:
    """The values that used to validate and then break the service are refused by key."""
    path = write(tmp_path, f"resource_management:\n  {yaml_text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert info.value.key == f"resource_management.{key}"


def test_largest_valid_settings_build_a_supervisor() -> None:
    """Values at their upper bounds validate and construct a Supervisor (no late failure)."""
    from resource_supervisor import Supervisor
    from resource_supervisor._limits import MAX_DURATION_SECONDS, MAX_TIMEOUT_SECONDS

    settings = build_settings(
        monitoring_interval=MAX_TIMEOUT_SECONDS,
        cleanup_handler_timeout=MAX_TIMEOUT_SECONDS,
        provider_timeout=MAX_TIMEOUT_SECONDS,
        session_ttl=MAX_DURATION_SECONDS,
        session_ttl_aggressive=MAX_DURATION_SECONDS,
    )
    assert repr(Supervisor(settings)).startswith("<Supervisor state=new")


# -- fuzz: files and environments of any shape ---------------------------------------

_ANY_KEYS = st.one_of(
    st.sampled_from(["monitoring_interval", "concurrency", "dask", "queue_limit", "hysteresis"]),
    st.text(max_size=6),
    st.integers(-5, 5),
    st.none(),
    st.booleans(),
)
_ANY_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_KEYS, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40)
@given(section=st.dictionaries(_ANY_KEYS, _ANY_VALUES, max_size=5))
def test_fuzzed_keys_of_any_type_only_raise_config_error(section: dict[Any, Any]) -> None:
    """Sections with keys of any YAML type and values of any shape load or raise ConfigError."""
    import tempfile
    import warnings
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump({"resource_management": section}))
        error: ConfigError | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            try:
                load_settings(path, environ={})
            except ConfigError as err:
                error = err
        if error is not None:
            assert error.source == str(path)
            assert error.key.startswith(("resource_management", "<document>"))


@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_file_bytes_only_raise_config_error(data: bytes) -> None:
    """Any file content loads (maybe with a ConfigWarning) or raises ConfigError naming it."""
    import tempfile
    import warnings
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(b"resource_management:\n  " + data)
        error: ConfigError | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            try:
                load_settings(path, environ={})
            except ConfigError as err:
                error = err
        if error is not None:
            assert error.source == str(path)


@settings(max_examples=50)
@given(
    extra=st.dictionaries(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=24),
        st.text(max_size=16),
        max_size=6,
    )
)
def test_fuzzed_prefixed_variables_naming_no_setting_never_fail(extra: dict[str, str]) -> None:
    """Any RESOURCE_SUPERVISOR_* variable that names no setting is ignored, never an error."""
    import warnings

    from resource_supervisor._config_errors import field_paths

    known = {p.replace(".", "__").upper() for p in field_paths(SupervisorSettings)}
    environ = {f"{ENV_PREFIX}{name}": value for name, value in extra.items() if name not in known}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        assert load_settings(environ=environ) == SupervisorSettings()
