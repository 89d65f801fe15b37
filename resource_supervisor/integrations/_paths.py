"""
Which request paths are exempt from shedding: the pure matching rule.

Covers: :func:`app_path` (the path inside the app: the ASGI ``path`` without the
server's ``root_path``), :func:`resolve_segments` (the path's segments once ``.``,
``..`` and empty segments are resolved, as a file server would) and
:func:`is_exempt` (whether a path lies inside one of the exempt prefixes, segment by
segment). Does not cover: routes marked with ``exempt_from_shedding`` (see
:mod:`resource_supervisor.integrations.fastapi`) or when to shed at all.

The rule, and why each step:

* The server's ``root_path`` (``uvicorn --root-path /api``) is removed first: the
  exempt prefixes name paths of the app, and the app routes without it.
* The ASGI ``path`` is already percent-decoded once by the server, and the app and
  ``StaticFiles`` resolve exactly that string; decoding it again would match a
  different path than the one served, so it is not decoded twice.
* Empty and ``.`` segments are dropped and ``..`` removes the segment before it, as
  ``os.path.normpath`` does for ``StaticFiles``: ``/health/../big.txt`` is
  ``/big.txt``, and ``/health//../big.txt`` is too. A path whose ``..`` climbs above
  the root is never exempt.
* A prefix matches whole segments: ``/healthz`` is not inside ``/health``.

Whatever does not resolve inside an exempt prefix is shed: when in doubt, shed.

Tied to a file server's resolution on purpose; do not loosen without a test that
serves a file through the path (see ``tests/integrations/test_shedding.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ("app_path", "exempt_prefix", "is_exempt", "resolve_segments")


def app_path(scope: Mapping[str, object]) -> str:
    """
    Return the request's path inside the app: ``path`` without ``root_path``. Pure.

    Servers put the ``root_path`` in front of ``path`` (ASGI 3, uvicorn 0.26 and
    later); older ones did not, and then ``path`` is returned as it is, the way
    Starlette's router reads it.

    Args:
        scope: An HTTP or websocket ASGI scope.

    Returns:
        The path, percent-decoded as the server gave it; ``"/"`` for the root.
    """
    path = str(scope.get("path", "") or "")
    root = str(scope.get("root_path", "") or "").rstrip("/")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :]
    return path or "/"


def resolve_segments(path: str) -> tuple[str, ...] | None:
    """
    Return the segments of *path* with ``.``, ``..`` and empty segments resolved. Pure.

    Args:
        path: A decoded path such as ``"/health/../big.txt"``.

    Returns:
        The segments (``("big.txt",)``; ``()`` for the root), or ``None`` if a
        ``..`` climbs above the root.
    """
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                return None
            segments.pop()
        else:
            segments.append(segment)
    return tuple(segments)


def exempt_prefix(prefix: str) -> tuple[str, ...]:
    """
    Validate an exempt prefix and return its segments. Pure.

    Args:
        prefix: A path such as ``"/health"``; a trailing ``/`` is allowed and ``"/"``
            exempts every path.

    Returns:
        Its segments (``("health",)``).

    Raises:
        ValueError: If *prefix* does not start with ``/`` or has ``.``, ``..`` or
            empty segments.
    """
    if not prefix.startswith("/"):
        raise ValueError(f"an exempt path must start with '/', got {prefix!r}")
    segments = tuple(prefix.strip("/").split("/")) if prefix.strip("/") else ()
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"an exempt path must not have '.', '..' or '//' in it, got {prefix!r}")
    return segments


def is_exempt(path: str, prefixes: Iterable[str | tuple[str, ...]]) -> bool:
    """
    Whether *path* lies at or below one of *prefixes*, segment by segment. Pure.

    Args:
        path: The path inside the app, decoded once (see :func:`app_path`).
        prefixes: Exempt prefixes, as paths (``"/health"``) or as the segments
            :func:`exempt_prefix` returns (faster when checked per request).

    Returns:
        ``True`` if the resolved path starts with every segment of a prefix;
        ``False`` otherwise, and always if the path climbs above the root.

    Raises:
        ValueError: If a prefix given as a path is invalid (see :func:`exempt_prefix`).
    """
    segments = resolve_segments(path)
    if segments is None:
        return False
    for prefix in prefixes:
        wanted = exempt_prefix(prefix) if isinstance(prefix, str) else prefix
        if segments[: len(wanted)] == wanted:
            return True
    return False
