"""HEAD is answered as GET, without the body (RFC 9110 9.3.2), on every HTTP listener.

Found by review: FastAPI's GET routes (``@app.get``) take no HEAD, so a HEAD
to the API (a monitoring probe, ``curl -I``) got 405 Method Not Allowed, as it
did on the metrics listener; only the dashboard's Starlette routes took it.
Served for real (uvicorn) and asked with httpx, as a client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from api_fake import LoopThread, free_port, served_tcp, served_unix

TOKEN = "s3cret-token-0123456789"
#: Headers a HEAD answer carries as its GET would (RFC 9110: "the same header fields").
SAME = ("content-type", "content-length", "www-authenticate", "allow", "location")


def _same_as_get(c: httpx.Client, url: str, **kw: object) -> httpx.Response:
    """HEAD ``url``: the status and headers of a GET of it, and no body."""
    got = c.get(url, **kw)  # type: ignore[arg-type]
    head = c.head(url, **kw)  # type: ignore[arg-type]
    assert head.status_code == got.status_code, (url, head.status_code, got.text)
    assert head.content == b""
    for name in SAME:
        assert head.headers.get(name) == got.headers.get(name), (url, name)
    return head


@pytest.fixture
def unix_api() -> Iterator[tuple[httpx.Client, str]]:
    with served_unix() as (path, svc):
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://smegd", timeout=10) as c:
            tok = svc.add_remote_mesh("brave-otter-lamp-head")
            mesh_id = c.post("/v1/join", json={"token": tok}).json()["mesh_id"]
            yield c, mesh_id


def test_head_of_the_api_routes_is_their_get_without_the_body(
    unix_api: tuple[httpx.Client, str],
) -> None:
    c, mesh_id = unix_api
    for url in (
        "/v1/health",
        "/v1/meshes",
        f"/v1/meshes/{mesh_id}",
        f"/v1/graph?meshid={mesh_id}",
        "/v1/status",
        "/api/v1/meshes",
        "/openapi.json",
    ):
        assert _same_as_get(c, url).status_code == 200, url
    assert int(c.head("/v1/status").headers["content-length"]) > 0


def test_head_errors_are_those_of_get(unix_api: tuple[httpx.Client, str]) -> None:
    c, _mesh_id = unix_api
    assert _same_as_get(c, "/v1/meshes/no-such-mesh").status_code == 404
    assert _same_as_get(c, "/v2/nothing").status_code == 404
    # a route without GET: no HEAD either
    r = _same_as_get(c, "/v1/join")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_allow_names_head_where_get_is(unix_api: tuple[httpx.Client, str]) -> None:
    c, _mesh_id = unix_api
    r = c.patch("/v1/health")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_head_of_the_event_stream_ends(unix_api: tuple[httpx.Client, str]) -> None:
    """The stream's GET never ends: its HEAD does, with the stream's headers."""
    c, _mesh_id = unix_api
    r = c.head("/v1/events", timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/event-stream")
    assert c.get("/v1/health").status_code == 200  # the connection serves on


def test_head_without_the_token_is_refused_as_get() -> None:
    with served_tcp(TOKEN) as (url, _svc), httpx.Client(base_url=url, timeout=10) as c:
        for path in ("/v1/meshes", "/v1/status", "/openapi.json", "/docs"):
            r = _same_as_get(c, path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        wrong = {"Authorization": "Bearer not-the-token"}
        assert _same_as_get(c, "/v1/meshes", headers=wrong).status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert _same_as_get(c, "/v1/meshes", headers=ok).status_code == 200
        assert _same_as_get(c, "/v1/health").status_code == 200  # open, as GET
        # the dashboard: its login form is open, its page is not
        assert _same_as_get(c, "/ui/login").status_code == 200
        assert _same_as_get(c, "/ui/").headers["location"] == "login"  # 303, as GET
        assert _same_as_get(c, "/ui").status_code == 307


def test_head_of_the_metrics_listener() -> None:
    from smegmesh.daemon.metrics import Metrics, serve_metrics

    metrics = Metrics(SimpleNamespace(meshes={}, config=None, dns=None, wg_status={}))
    lt = LoopThread()
    try:
        port = free_port()
        server = lt.run(serve_metrics(metrics, "127.0.0.1", port))
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                for url in ("/metrics", "/"):
                    assert _same_as_get(c, url).status_code == 200, url
        finally:
            lt.run(server.stop())
    finally:
        lt.close()


def test_head_as_get_alone() -> None:
    """The middleware over a bare ASGI app: HEAD reaches it as GET, the body goes,
    and nothing it sends after the end of the answer reaches the server."""
    from smegmesh.daemon.api_head import HeadAsGet

    seen: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        seen.append(scope["method"])
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"def"})  # type: ignore[operator]

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "HEAD", "path": "/", "headers": []}
    asyncio.run(HeadAsGet(app)(scope, receive, send))  # type: ignore[arg-type]
    assert seen == ["GET"] and scope["method"] == "HEAD"
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}
