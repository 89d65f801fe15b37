"""
Who may use the Dask lane's cluster: credentials and the settings that keep it private.

Covers:

* :func:`owned_security`: fresh TLS credentials for one owned cluster
  (``distributed.security.Security.temporary()``: a self-signed certificate and key
  made in memory, used by the scheduler, the nannies, the workers and the lane's
  client alike, with ``require_encryption``). Every comm port then demands TLS with
  a client certificate signed by that cluster's own key: a plain ``tcp://`` client,
  a ``tls://`` client without a certificate, or one with another cluster's
  certificate is refused before any message is read.
* :func:`private_config`: the Dask config an owned cluster is created under. The
  scheduler's and the workers' HTTP servers cannot be switched off (they bind even
  without a dashboard), so they get no routes: every request answers 404, nothing
  there reads cluster state or runs code.
* :func:`subprocess_environment`: the same credentials and config for a scheduler and
  workers started as separate programs (``dask.scheduler_in_subprocess``), as
  ``DASK_*`` environment variables of those processes only. Never command-line
  arguments, which every local user can read in ``/proc/<pid>/cmdline``;
  ``/proc/<pid>/environ`` is readable by the service's own user only.
* :func:`connect_security`: the user's ``dask.security`` files (CA, certificate,
  key; validated by :class:`~.._config.DaskSecuritySettings`) for a connected
  scheduler.

Does not cover: starting or closing clusters (:mod:`._cluster`,
:mod:`._subprocess`). A process of the service's own user can read the
service's memory anyway; the credentials keep out every other user and every
process without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed.security import Security

    from ..._config import DaskSecuritySettings

__all__ = (
    "connect_security",
    "owned_security",
    "private_config",
    "subprocess_environment",
)


def owned_security() -> Security:
    """
    Fresh credentials for one owned cluster, kept in memory (never written to a file).

    Returns:
        A ``Security`` with ``require_encryption`` and one certificate for every role.

    Raises:
        ImportError: If ``cryptography`` (part of the ``[dask]`` extra) is missing.
    """
    from distributed.security import Security

    try:
        security: Security = Security.temporary()  # type: ignore[no-untyped-call]
    except ImportError as exc:
        raise ImportError(
            "a private Dask cluster needs the 'cryptography' package of the 'dask' extra: "
            "pip install 'resource-supervisor[dask]'"
        ) from exc
    return security


def private_config() -> dict[str, object]:
    """
    The Dask config (dotted keys) an owned cluster is created under.

    Returns:
        No HTTP routes on the scheduler and the workers, and a worker saturation of
        1.0 (see :mod:`._cluster`).
    """
    return {
        "distributed.scheduler.http.routes": [],
        "distributed.worker.http.routes": [],
        "distributed.scheduler.worker-saturation": 1.0,
    }


def _variable(dotted: str) -> str:
    return "DASK_" + dotted.replace("-", "_").replace(".", "__").upper()


def subprocess_environment(security: Security | None) -> dict[str, str]:
    """
    ``DASK_*`` variables giving a subprocess scheduler or worker *security* and
    :func:`private_config`.

    Args:
        security: The owned cluster's credentials (PEM text, not paths), or ``None``
            for plain tcp.

    Returns:
        Variables to add to the subprocess's environment.
    """
    values: dict[str, object] = dict(private_config())
    if security is not None:
        values["distributed.comm.require-encryption"] = True
        values["distributed.comm.default-scheme"] = "tls"
        values["distributed.comm.tls.ca-file"] = security.tls_ca_file  # type: ignore[attr-defined]
        for role in ("scheduler", "worker", "client"):
            values[f"distributed.comm.tls.{role}.cert"] = getattr(security, f"tls_{role}_cert")
            values[f"distributed.comm.tls.{role}.key"] = getattr(security, f"tls_{role}_key")
    # Dask reads each value with ast.literal_eval and keeps the text where that
    # fails, as it does for PEM blocks; lists and numbers are written as literals.
    return {
        _variable(key): value if isinstance(value, str) else repr(value)
        for key, value in values.items()
    }


def connect_security(settings: DaskSecuritySettings) -> Security | None:
    """
    The client credentials for a connected scheduler, from ``dask.security``.

    Args:
        settings: The validated file paths.

    Returns:
        A ``Security`` requiring TLS, or ``None`` when no CA file is configured.
    """
    if settings.ca_file is None:
        return None
    from distributed.security import Security

    return Security(  # type: ignore[no-untyped-call]
        require_encryption=True,
        tls_ca_file=settings.ca_file,
        tls_client_cert=settings.cert_file,
        tls_client_key=settings.key_file,
    )
