"""
Tests of which requests load shedding exempts: root paths, mounts, percent-encoding,
dot segments, double slashes and methods; the pure matcher and the middleware, over
the ASGI interface and under a real uvicorn.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from typing import TYPE_CHECKING

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resource_supervisor._snapshot import PressureLevel
from resource_supervisor.integrations._paths import (
    app_path,
    exempt_prefix,
    is_exempt,
    resolve_segments,
)
from resource_supervisor.integrations.fastapi import DEFAULT_EXEMPT_PATHS, LoadSheddingMiddleware
from resource_supervisor.testing import ScriptedSource
from tests._http import asgi_request, raw_request, shedding_app, uvicorn_subprocess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from fastapi import FastAPI

SECRET = b"not for overloaded times\n"


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    """A directory for StaticFiles with a file outside every exempt prefix."""
    (tmp_path / "big.txt").write_bytes(SECRET)
    (tmp_path / "health").mkdir()
    (tmp_path / "health" / "note.txt").write_bytes(b"inside /health\n")
    return tmp_path


@contextlib.asynccontextmanager
async def critical_app(static_dir: Path | None = None) -> AsyncIterator[FastAPI]:
    """A running app at CRITICAL with StaticFiles mounted at /."""
    source = ScriptedSource()
    app = shedding_app(source, static_dir=static_dir)
    async with app.router.lifespan_context(app):
        source.set(memory_percent=99.0)
        assert (await app.state.supervisor.update_metrics()).pressure_level is (
            PressureLevel.CRITICAL
        )
        yield app


# -- the pure matcher --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/health", True),
        ("/health/", True),
        ("/health/resources", True),
        ("/healthz", True),
        ("/healthzz", False),
        ("/healthz/x", True),
        ("/health/../big.txt", False),
        ("/health/./resources", True),
        ("/health//resources", True),
        ("/health//../big.txt", False),  # // collapses first, as normpath does
        ("/health/x/../../big.txt", False),
        ("/health/x/..", True),
        ("//healthz", True),
        ("/./healthz", True),
        ("/../healthz", False),  # climbs above the root
        ("/metrics", True),
        ("/metrics/stream", True),
        ("/metricsx", False),
        ("/", False),
        ("", False),
        ("/work", False),
        ("/%2e%2e/healthz", False),  # not decoded twice: a literal segment
    ],
)
def test_is_exempt_matches_resolved_segments(path: str, exempt: bool) -> None:
    """A path is exempt iff, once resolved, its leading segments are a prefix's."""
    assert is_exempt(path, DEFAULT_EXEMPT_PATHS) is exempt


def test_root_prefix_exempts_everything_but_escapes() -> None:
    """'/' exempts every path that stays inside the app."""
    assert is_exempt("/anything/at/all", ["/"])
    assert is_exempt("/", ["/"])
    assert not is_exempt("/..", ["/"])


@pytest.mark.parametrize("bad", ["health", "", "/a/../b", "/a//b", "/./a"])
def test_bad_exempt_prefix_is_a_clear_error(bad: str) -> None:
    """A prefix that is not a clean absolute path is refused, naming it."""
    with pytest.raises(ValueError, match="exempt path"):
        exempt_prefix(bad)
    with pytest.raises(ValueError, match="exempt path"):
        LoadSheddingMiddleware(shedding_app(), exempt_paths=[bad])


@pytest.mark.parametrize(
    ("path", "root_path", "inside"),
    [
        ("/api/healthz", "/api", "/healthz"),
        ("/api", "/api", "/"),
        ("/api/", "/api/", "/"),
        ("/apix/healthz", "/api", "/apix/healthz"),  # not below the root path
        ("/healthz", "/api", "/healthz"),  # a server that leaves root_path out
        ("/healthz", "", "/healthz"),
    ],
)
def test_app_path_removes_the_root_path(path: str, root_path: str, inside: str) -> None:
    """The path inside the app is the ASGI path without the server's root_path."""
    assert app_path({"path": path, "root_path": root_path}) == inside


segment = st.sampled_from(["health", "healthz", "metrics", "x", "big.txt", "..", ".", ""])


@given(st.lists(segment, max_size=8))
def test_exempt_paths_resolve_inside_the_prefix_as_a_file_server_does(
    segments: list[str],
) -> None:
    """Whenever a path is exempt, the file StaticFiles would serve for it (its
    normpath) lies inside an exempt prefix too: no dot segment escapes."""
    path = "/" + "/".join(segments)
    served = os.path.normpath(os.path.join(*path.split("/")))  # StaticFiles.get_path
    if is_exempt(path, DEFAULT_EXEMPT_PATHS):
        assert not served.startswith("..")
        first = served.split("/")[0]
        assert "/" + first in DEFAULT_EXEMPT_PATHS
    resolved = resolve_segments(path)
    if resolved is not None:
        assert posixpath.normpath("/" + "/".join(resolved)) == "/" + "/".join(resolved)


# -- the middleware over ASGI ------------------------------------------------------


async def test_dot_segments_cannot_reach_a_static_file_through_an_exempt_prefix(
    static_dir: Path,
) -> None:
    """With StaticFiles at /, /health/../big.txt (what /health/%2e%2e/big.txt decodes
    to) is shed at CRITICAL, as is the // variant; files really below /health are
    still served."""
    async with critical_app(static_dir) as critical:
        for path in ("/health/../big.txt", "/health//../big.txt", "/healthz/../big.txt"):
            status, body = await asgi_request(critical, "GET", path)
            assert (status, SECRET in body) == (503, False), path
        assert (await asgi_request(critical, "GET", "/health/note.txt"))[0] == 200


async def test_percent_encoded_dots_over_httpx_are_shed(static_dir: Path) -> None:
    """httpx keeps %2e%2e on the wire and the transport decodes it: still shed."""
    async with critical_app(static_dir) as critical:
        transport = httpx.ASGITransport(app=critical)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/health/%2e%2e/big.txt")
            assert response.status_code == 503
            assert (await client.get("/health/resources")).status_code == 200


async def test_segments_match_whole(static_dir: Path) -> None:
    """/healthzz is not /healthz: shed."""
    async with critical_app(static_dir) as critical:
        assert (await asgi_request(critical, "GET", "/healthzz"))[0] == 503
        assert (await asgi_request(critical, "GET", "/healthz"))[0] == 200


@pytest.mark.parametrize("root", ["/api", "/api/v1"])
async def test_probes_answer_under_a_root_path(static_dir: Path, root: str) -> None:
    """Under a root path the probes, /metrics, the router and marked routes are
    matched on the path inside the app and answer; other routes are shed."""
    async with critical_app(static_dir) as critical:
        for path in ("/healthz", "/health/resources", "/metrics", "/ready"):
            assert (await asgi_request(critical, "GET", path, root_path=root))[0] == 200, path
        assert (await asgi_request(critical, "GET", "/work", root_path=root))[0] == 503
        status, body = await asgi_request(critical, "GET", "/health/../big.txt", root_path=root)
        assert (status, SECRET in body) == (503, False)


async def test_root_path_over_httpx_transport(static_dir: Path) -> None:
    """Starlette's root_path scope as httpx's transport sets it."""
    async with critical_app(static_dir) as critical:
        transport = httpx.ASGITransport(app=critical, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/api/healthz")).status_code == 200
            assert (await client.get("/api/metrics")).status_code == 200
            assert (await client.get("/api/work")).status_code == 503


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "POST"])
async def test_methods_do_not_change_what_is_exempt(static_dir: Path, method: str) -> None:
    """HEAD, OPTIONS and POST are shed or exempt by path alone."""
    async with critical_app(static_dir) as critical:
        assert (await asgi_request(critical, method, "/work"))[0] == 503
        assert (await asgi_request(critical, method, "/healthzz"))[0] == 503
        assert (await asgi_request(critical, method, "/health/../big.txt"))[0] == 503
        # Not shed: whatever the route answers to that method (200, or 405).
        assert (await asgi_request(critical, method, "/healthz"))[0] != 503
        assert (await asgi_request(critical, method, "/health/resources"))[0] != 503


async def test_marked_route_in_a_mounted_app_under_a_root_path(static_dir: Path) -> None:
    """A marked route inside a mounted sub-application stays exempt under a root path."""
    from fastapi import FastAPI
    from starlette.routing import Mount

    from resource_supervisor.integrations.fastapi import exempt_from_shedding

    source = ScriptedSource()
    app = shedding_app(source)
    sub = FastAPI()

    @sub.get("/probe")
    @exempt_from_shedding
    async def probe() -> dict[str, bool]:
        return {"ok": True}

    @sub.get("/job")
    async def job() -> dict[str, bool]:
        return {"ok": True}

    app.router.routes.insert(0, Mount("/sub", app=sub))
    async with app.router.lifespan_context(app):
        source.set(memory_percent=99.0)
        await app.state.supervisor.update_metrics()
        assert (await asgi_request(app, "GET", "/sub/probe", root_path="/api"))[0] == 200
        assert (await asgi_request(app, "GET", "/sub/job", root_path="/api"))[0] == 503


# -- under a real uvicorn ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_real_uvicorn_with_root_path_and_static_files(static_dir: Path) -> None:
    """uvicorn --root-path /api at CRITICAL (the proxy strips /api, uvicorn puts it
    back in front of the path): probes, /metrics and the router answer;
    /health/%2e%2e/big.txt and other paths are shed, whatever the method."""
    with uvicorn_subprocess(
        "critical_app", "--root-path", "/api", env={"RS_TEST_STATIC": str(static_dir)}
    ) as served:
        port = served.port
        for target in ("/healthz", "/health/resources", "/metrics", "/ready"):
            assert raw_request(port, "GET", target)[0] == 200, target
            assert raw_request(port, "HEAD", target)[0] != 503, target
        assert raw_request(port, "GET", "/health/note.txt")[0] == 200
        for target in (
            "/health/%2e%2e/big.txt",
            "/health/%2E%2E/big.txt",
            "/health/../big.txt",
            "/health//../big.txt",
            "/health%2f..%2fbig.txt",
            "/healthzz",
            "/work",
        ):
            for method in ("GET", "HEAD", "OPTIONS"):
                status, body = raw_request(port, method, target)
                assert (status, SECRET in body) == (503, False), (method, target)
    assert "Traceback" not in served.stderr
