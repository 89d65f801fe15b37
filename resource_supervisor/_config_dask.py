"""
Settings of the Dask backend: where the cluster is, how the lane uses it, and the TLS
credentials of a connected scheduler.

Covers: :class:`DaskSettings` (``concurrency.dask``) and :class:`DaskSecuritySettings`
(``concurrency.dask.security``): each credential path names a readable PEM file, the
certificate and key load as a pair, and credentials apply only to a connected
scheduler. Does not cover: using them (:mod:`.broker._dask`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import field_validator, model_validator

from ._config_base import Frozen, RelationError, auto_or_positive_int
from ._limits import Bytes, Interval, Retries, Timeout

__all__ = ("DaskSecuritySettings", "DaskSettings")


def readable_pem(value: str | None, marker: str, what: str) -> str | None:
    """A path to a readable file holding a PEM block whose header contains *marker*."""
    if value is None:
        return None
    path = Path(value)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ValueError("file not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from exc
    if not re.search(rf"-----BEGIN [A-Z ]*{marker}-----", text):
        raise ValueError(f"holds no PEM {what}")
    return value


class DaskSecuritySettings(Frozen):
    """
    TLS credentials for a connected Dask scheduler (``dask.address`` or
    ``dask.scheduler_file`` at a ``tls://`` address). An owned cluster makes its own.

    Each path must name a readable PEM file; the certificate and key must match.
    """

    ca_file: str | None = None
    """PEM file of the CA that signed the scheduler's and workers' certificates."""
    cert_file: str | None = None
    """PEM file of this client's certificate (it may also hold the key)."""
    key_file: str | None = None
    """PEM file of this client's private key (``None``: it is in ``cert_file``)."""

    @field_validator("ca_file")
    @classmethod
    def _check_ca(cls, value: str | None) -> str | None:
        return readable_pem(value, "CERTIFICATE", "certificate")

    @field_validator("cert_file")
    @classmethod
    def _check_cert(cls, value: str | None) -> str | None:
        return readable_pem(value, "CERTIFICATE", "certificate")

    @field_validator("key_file")
    @classmethod
    def _check_key(cls, value: str | None) -> str | None:
        return readable_pem(value, "PRIVATE KEY", "private key")

    @model_validator(mode="after")
    def _check_pair(self) -> DaskSecuritySettings:
        import ssl

        prefix = "concurrency.dask.security"
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if given and self.ca_file is None:
            raise RelationError([(f"{prefix}.ca_file", None, "required with cert_file/key_file")])
        if given and self.cert_file is None:
            raise RelationError([(f"{prefix}.cert_file", None, "required with ca_file")])
        if self.ca_file is None or self.cert_file is None:
            return self
        if self.key_file is None:
            try:
                readable_pem(self.cert_file, "PRIVATE KEY", "private key")
            except ValueError:
                reason = "holds no private key, and key_file is not set"
                raise RelationError([(f"{prefix}.cert_file", self.cert_file, reason)]) from None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            context.load_verify_locations(cafile=self.ca_file)
        except ssl.SSLError as exc:
            raise RelationError([(f"{prefix}.ca_file", self.ca_file, f"not a CA: {exc}")]) from exc
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            key = "key_file" if self.key_file is not None else "cert_file"
            value = getattr(self, key)
            reason = f"certificate and key do not load as a pair: {exc}"
            raise RelationError([(f"{prefix}.{key}", value, reason)]) from exc
        return self


class DaskSettings(Frozen):
    """
    The distributed backend of the process lane (``concurrency.backend: dask``).

    With ``address`` or ``scheduler_file`` the lane connects to an existing
    scheduler and never closes it; with neither, the supervisor owns a
    ``LocalCluster`` on 127.0.0.1.
    """

    address: str | None = None
    """``tcp://host:port`` of an existing scheduler."""
    scheduler_file: str | None = None
    """Path of a scheduler file written by ``dask scheduler --scheduler-file``."""
    n_workers: int | Literal["auto"] = "auto"
    """Owned cluster only: worker processes (``auto`` = the lane's worker count)."""
    memory_limit_bytes: Bytes | None = None
    """Owned cluster only: memory limit per worker (``None`` = effective limit / workers)."""
    retries: Retries = 0
    """0 = at most once (crash fails the call); N > 0 = at least once with N retries."""
    scheduler_in_subprocess: bool = False
    """Owned cluster only: run the scheduler in its own process, off the service's loop."""
    target_chunk_seconds: Timeout = 0.5
    """map_in_processes grows chunks until each takes about this long (a Dask task
    costs ~3 ms on an owned cluster, more over a network, so 0.5 s keeps that floor
    near 1 %)."""
    poll_interval: Interval = 1.0
    """Seconds between reads of the cluster's pressure (paused workers, memory, queue)."""
    connect_timeout: Timeout = 10.0
    """Seconds to wait for the scheduler (and owned workers) on start."""
    close_timeout: Timeout = 10.0
    """Seconds to wait for an owned cluster to close before killing what is left."""
    tls: bool = True
    """Owned cluster only: TLS with credentials made for that cluster, so no other
    process can use it. ``False`` = plain tcp, which lets any local process run code
    as this service (only where no one else can reach the host's loopback)."""
    security: DaskSecuritySettings = DaskSecuritySettings()
    """Connected scheduler only: TLS credentials (CA, certificate, key paths)."""

    _check_workers = field_validator("n_workers", mode="before")(auto_or_positive_int)

    @model_validator(mode="after")
    def _one_target(self) -> DaskSettings:
        if self.address is not None and self.scheduler_file is not None:
            raise ValueError("give either address or scheduler_file, not both")
        connected = self.address is not None or self.scheduler_file is not None
        if self.security.ca_file is not None and not connected:
            reason = (
                "applies to a connected scheduler (address or scheduler_file); "
                "an owned cluster makes its own credentials"
            )
            raise RelationError([("concurrency.dask.security", self.security.model_dump(), reason)])
        return self
