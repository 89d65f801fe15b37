"""
Tests that an owned Dask cluster is private to its supervisor, that connect mode uses
the configured TLS credentials, and that those credentials are validated.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import psutil
import pytest
import yaml

from resource_supervisor._config import (
    ConcurrencySettings,
    build_settings,
    load_settings,
)
from resource_supervisor._exceptions import ConfigError
from resource_supervisor.broker._dask._lane import DaskLane
from tests import _dask_workers as w
from tests._loop_guard import blocking_setup
from tests._settings import dask_settings
from tests.broker.dask.test_dask import no_leaks  # noqa: F401 - the fixture

if TYPE_CHECKING:
    from distributed.security import Security

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]
KEY = r"resource_management\.concurrency\.dask"


def _settings(**dask: object) -> ConcurrencySettings:
    """One worker (the shared builder's defaults otherwise); *dask* overrides any of it."""
    return dask_settings(**{"n_workers": 1, **dask})


async def _settings_with_files(**dask: object) -> ConcurrencySettings:
    """:func:`_settings` built off the loop: validating credentials reads their files."""
    return await anyio.to_thread.run_sync(functools.partial(_settings, **dask))


@blocking_setup("lists listening ports through psutil")
def _listening_tree() -> dict[int, str]:
    """Listening TCP ports of this process and all its descendants: ``{port: ip}``."""
    me = psutil.Process()
    found: dict[int, str] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue  # gone meanwhile
        found.update(
            {c.laddr.port: c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN}
        )
    return found


def _security(lane: DaskLane) -> Any:
    """The credentials of the lane's client (distributed's public ``Client.security``)."""
    handle = lane._handle
    assert handle is not None
    return handle.client.security  # type: ignore[attr-defined]


@blocking_setup("writes a credential file")
def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return str(path)


async def _intrude(ports: list[int], own_pem: str | None) -> dict[str, dict[str, Any]]:
    """Run :func:`tests._dask_workers.intrude` in a separate process; its findings."""
    code = f"from tests._dask_workers import intrude; intrude({ports!r}, {own_pem!r})"
    with anyio.fail_after(60):  # hang guard
        result = await anyio.run_process([sys.executable, "-c", code], cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr.decode()
    found: dict[str, dict[str, Any]] = json.loads(result.stdout)
    return found


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("in_subprocess", [False, True], ids=["local", "subprocess-scheduler"])
async def test_owned_cluster_refuses_clients_without_its_credentials(
    in_subprocess: bool, tmp_path: Path
) -> None:
    """
    From another process, on every port the owned cluster listens on (scheduler,
    nannies, workers, their HTTP servers), a plain tcp:// client, a tls:// client
    without a certificate, and tls:// clients with another cluster's certificate are
    all refused; only the cluster's own certificate gets in. The HTTP servers serve
    nothing (404 everywhere), and everything listens on 127.0.0.1 only.
    """
    n_workers = 1 if in_subprocess else 2
    before = _listening_tree()
    settings = _settings(n_workers=n_workers, scheduler_in_subprocess=in_subprocess)
    async with DaskLane(settings, max_workers=n_workers) as lane:
        assert await lane.run(w.add, (1, 2), timeout=None) == 3
        listening = {p: ip for p, ip in _listening_tree().items() if p not in before}
        security = _security(lane)
        own = _write(tmp_path / "own.pem", security.tls_client_cert + security.tls_client_key)
        found = await _intrude(sorted(listening), own)
    assert set(listening.values()) == {"127.0.0.1"}
    comm, http = [], []
    for port, outcomes in found.items():
        control = outcomes.pop("tls_rpc_own_certificate")
        statuses = outcomes.pop("http")
        for way, outcome in outcomes.items():
            assert outcome.startswith("refused"), (port, way, outcome)
        assert not any(s.startswith(("2", "3")) for s in statuses), (port, statuses)
        if control.startswith("ran"):
            comm.append(port)
        else:
            assert statuses == ["404"] * len(statuses), (port, control, statuses)
            http.append(port)
    # one scheduler, and per worker a nanny and the worker itself; one HTTP server each
    assert len(comm) == 1 + 2 * n_workers
    assert len(http) == 1 + n_workers


@pytest.mark.usefixtures("no_leaks")
async def test_plain_tcp_cluster_lets_any_process_run_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    With ``dask.tls: false`` the owned cluster is what TLS prevents: a plain client in
    another process runs a function on the scheduler, inside this very process. Its
    start logs a warning saying so.
    """
    async with DaskLane(_settings(tls=False), max_workers=1) as lane:
        handle = lane._handle
        assert handle is not None
        assert handle.address.startswith("tcp://127.0.0.1:")
        port = int(handle.address.rsplit(":", 1)[1])
        found = await _intrude([port], None)
    assert found[str(port)]["tcp_client"] == f"ran: {os.getpid()}"
    assert "any local process can run code" in caplog.text


@pytest.mark.usefixtures("no_leaks")
async def test_connect_mode_uses_the_configured_credentials(tmp_path: Path) -> None:
    """
    A lane connecting to a tls:// scheduler with ``dask.security`` files of that
    cluster runs calls; with another cluster's credentials it gets ConfigError
    naming the address.
    """
    from distributed.security import Security

    async with DaskLane(_settings(), max_workers=1) as owner:
        handle = owner._handle
        assert handle is not None
        assert handle.address.startswith("tls://127.0.0.1:")
        security = _security(owner)
        files = {
            "ca_file": _write(tmp_path / "ca.pem", security.tls_ca_file),
            "cert_file": _write(tmp_path / "cert.pem", security.tls_client_cert),
            "key_file": _write(tmp_path / "key.pem", security.tls_client_key),
        }
        async with DaskLane(
            await _settings_with_files(address=handle.address, security=files), max_workers=1
        ) as lane:
            assert await lane.run(w.add, (2, 3), timeout=None) == 5
            assert lane.metrics()["process_lane_delivery"] == "at-most-once"
        foreign: Security = Security.temporary()  # type: ignore[no-untyped-call]
        both = foreign.tls_client_cert + foreign.tls_client_key  # type: ignore[attr-defined]
        wrong = {
            "ca_file": _write(tmp_path / "foreign-ca.pem", foreign.tls_ca_file),  # type: ignore[attr-defined]
            "cert_file": _write(tmp_path / "foreign.pem", both),
        }
        settings = await _settings_with_files(
            address=handle.address, security=wrong, connect_timeout=1.0
        )
        with pytest.raises(ConfigError, match=rf"{KEY}\.address"):
            async with DaskLane(settings, max_workers=1):
                pass
        assert await owner.run(w.add, (1, 1), timeout=None) == 2


async def test_connect_mode_checks_scheme_against_credentials(tmp_path: Path) -> None:
    """
    A tls:// address without ``dask.security`` and a tcp:// address with it are both
    ConfigErrors naming the address, raised before connecting.
    """
    with pytest.raises(ConfigError, match=rf"{KEY}\.address.*needs {KEY}\.security"):
        async with DaskLane(_settings(address="tls://127.0.0.1:1"), max_workers=1):
            pass
    files = _credential_files(tmp_path)
    settings = await _settings_with_files(address="tcp://127.0.0.1:1", security=files)
    with pytest.raises(ConfigError, match=r"must be at a tls:// address"):
        async with DaskLane(settings, max_workers=1):
            pass
    scheduler_file = tmp_path / "scheduler.json"
    await anyio.Path(scheduler_file).write_text(json.dumps({"address": "tls://127.0.0.1:1"}))
    with pytest.raises(ConfigError, match=rf"{KEY}\.scheduler_file"):
        async with DaskLane(_settings(scheduler_file=str(scheduler_file)), max_workers=1):
            pass


# -- validating dask.security ------------------------------------------------------


def _credential_files(directory: Path) -> dict[str, str]:
    """CA, certificate and key files of a fresh self-signed identity."""
    from distributed.security import Security

    security = Security.temporary()  # type: ignore[no-untyped-call]
    return {
        "ca_file": _write(directory / "ca.pem", security.tls_ca_file),
        "cert_file": _write(directory / "cert.pem", security.tls_client_cert),
        "key_file": _write(directory / "key.pem", security.tls_client_key),
    }


def _connected(**security: object) -> None:
    build_settings(
        concurrency={
            "backend": "dask",
            "dask": {"address": "tls://127.0.0.1:8786", "security": security},
        }
    )


def test_valid_credentials_load(tmp_path: Path) -> None:
    """Readable matching files load; a certificate file holding the key needs no key_file."""
    files = _credential_files(tmp_path)
    _connected(**files)
    both = tmp_path / "both.pem"
    both.write_text(Path(files["cert_file"]).read_text() + Path(files["key_file"]).read_text())
    _connected(ca_file=files["ca_file"], cert_file=str(both))


@pytest.mark.parametrize(
    ("key", "path", "reason"),
    [
        ("ca_file", "missing.pem", "file not found"),
        ("cert_file", ".", "is a directory"),
        ("key_file", "ca.pem/inside", "cannot read"),
        ("ca_file", "key.pem", "holds no PEM certificate"),
        ("key_file", "cert.pem", "holds no PEM private key"),
    ],
)
def test_bad_credential_file_names_its_key(
    tmp_path: Path, key: str, path: str, reason: str
) -> None:
    """A missing, unreadable or wrong-content file is a ConfigError naming its key."""
    files = _credential_files(tmp_path)
    files[key] = str(tmp_path / path)
    with pytest.raises(ConfigError, match=rf"{KEY}\.security\.{key}: .*{reason}"):
        _connected(**files)


def test_credential_relations_name_the_key(tmp_path: Path) -> None:
    """
    A key that does not match the certificate, a certificate without its key, a CA or
    certificate alone, a CA that is no CA, and credentials for an owned cluster are
    each a ConfigError naming the key at fault.
    """
    files = _credential_files(tmp_path)
    (tmp_path / "other").mkdir()
    other = _credential_files(tmp_path / "other")
    cases: list[tuple[dict[str, str], str, str]] = [
        ({**files, "key_file": other["key_file"]}, "key_file", "do not load as a pair"),
        (
            {"ca_file": files["ca_file"], "cert_file": files["cert_file"]},
            "cert_file",
            "no private key",
        ),
        ({"ca_file": files["ca_file"]}, "cert_file", "required with ca_file"),
        ({"cert_file": files["cert_file"]}, "ca_file", "required with"),
    ]
    for security, key, reason in cases:
        with pytest.raises(ConfigError, match=rf"{KEY}\.security\.{key}: .*{reason}"):
            _connected(**security)
    not_a_ca = tmp_path / "not-a-ca.pem"
    not_a_ca.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ConfigError, match=rf"{KEY}\.security\.ca_file: .*not a CA"):
        _connected(**{**files, "ca_file": str(not_a_ca)})
    with pytest.raises(ConfigError, match=rf"{KEY}\.security: .*applies to a connected scheduler"):
        build_settings(concurrency={"backend": "dask", "dask": {"security": files}})


def test_credentials_from_yaml_and_environment(tmp_path: Path) -> None:
    """
    ``dask.security`` loads from the YAML section and from RESOURCE_SUPERVISOR_*
    variables; a non-mapping ``security`` is a ConfigError naming it.
    """
    files = _credential_files(tmp_path)
    config = tmp_path / "config.yaml"
    section = {"concurrency": {"dask": {"address": "tls://10.0.0.5:8786", "security": files}}}
    config.write_text(yaml.safe_dump({"resource_management": section}))
    assert load_settings(config, environ={}).concurrency.dask.security.key_file == files["key_file"]
    environ = {"RESOURCE_SUPERVISOR_CONCURRENCY__DASK__SECURITY__KEY_FILE": "/nonexistent.pem"}
    with pytest.raises(ConfigError, match=rf"{KEY}\.security\.key_file: .*file not found"):
        load_settings(config, environ=environ)
    section["concurrency"]["dask"]["security"] = "ca.pem"
    config.write_text(yaml.safe_dump({"resource_management": section}))
    with pytest.raises(ConfigError, match=rf"{KEY}\.security: .*must be a mapping"):
        load_settings(config, environ={})
