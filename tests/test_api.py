"""The local REST API, served for real on a unix socket (and TCP) over a fake NodeService."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api_fake import (
    PNG_MAGIC,
    SELF_KEY,
    FakeNodeService,
    LoopThread,
    served_tcp,
    served_unix,
    short_tmpdir,
)
from smegmesh.daemon.api import create_app, serve_unix
from smegmesh.daemon.service import NodeService

TOKEN = "s3cret-token-0123456789"


@pytest.fixture
def api() -> Iterator[tuple[httpx.Client, FakeNodeService, Path]]:
    with served_unix() as (path, svc):
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://smegd", timeout=10) as c:
            yield c, svc, path


def _err(resp: httpx.Response) -> dict[str, str]:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_fake_satisfies_protocol() -> None:
    assert isinstance(FakeNodeService(), NodeService)


def test_socket_mode_is_0600(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    _, _, path = api
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_socket_is_0600_even_with_permissive_umask() -> None:
    old = os.umask(0)
    try:
        with served_unix() as (path, _):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        os.umask(old)


def test_stale_socket_is_replaced_and_live_one_refused() -> None:
    d = short_tmpdir()
    path = d / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # file remains, nobody listens
    with served_unix(path=path) as (p, _):
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(p))) as c:
            assert c.get("http://x/v1/health").json()["ok"] is True
        # a second server on the same live socket must refuse, not steal it
        lt = LoopThread()
        try:
            with pytest.raises(OSError, match="another smegd"):
                lt.run(serve_unix(create_app(FakeNodeService()), path))
        finally:
            lt.close()
    assert not path.exists(), "socket removed on stop"


def test_mesh_lifecycle(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, svc, _ = api
    r = c.post("/v1/meshes", json={"wgport": 51900, "role": "peer", "advertise_routes": True})
    assert r.status_code == 201, r.text
    mesh_id = r.json()["mesh_id"]
    opts = svc.calls[-1][1][0]
    assert (opts.wgport, opts.role, opts.advertise_routes, opts.keepalive) == (
        51900,
        "peer",
        True,
        None,
    )

    # body is optional
    assert c.post("/v1/meshes").status_code == 201

    lst = c.get("/v1/meshes").json()
    assert next(m["mesh_id"] for m in lst) == mesh_id
    assert lst[0]["node_count"] == 1

    r = c.post(f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 3})
    assert r.status_code == 201
    assert r.json()["token"].startswith("inv-")
    assert svc.calls[-1] == ("invite", (mesh_id, 600, 3))
    r = c.post(f"/v1/meshes/{mesh_id}/invites")
    assert r.json()["ttl_s"] == 86400 and r.json()["uses"] == 1

    assert c.put(f"/v1/meshes/{mesh_id}/alias", json={"alias": "Web-1"}).json() == {
        "ok": True,
        "alias": "web-1",
    }
    assert c.put(f"/v1/meshes/{mesh_id}/description", json={"description": "rack 3"}).is_success
    assert c.put(f"/v1/meshes/{mesh_id}/services/http", json={"value": "80"}).is_success
    d = c.get(f"/v1/meshes/{mesh_id}").json()
    me = next(n for n in d["nodes"] if n["is_self"])
    assert (me["alias"], me["description"], me["services"]) == ("web-1", "rack 3", {"http": "80"})
    assert c.delete(f"/v1/meshes/{mesh_id}/services/http").is_success
    r = c.delete(f"/v1/meshes/{mesh_id}/services/http")
    assert r.status_code == 404 and _err(r)["code"] == "unknown_service"

    q = c.get(f"/v1/meshes/{mesh_id}/query", params={"q": "nodes[].alias"})
    assert q.json() == {"result": ["web-1"]}

    assert c.delete(f"/v1/meshes/{mesh_id}").json() == {"ok": True}
    r = c.get(f"/v1/meshes/{mesh_id}")
    assert r.status_code == 404


def test_join_with_token(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, svc, _ = api
    tok = svc.add_remote_mesh("calm-river-stone-0001")
    r = c.post("/v1/join", json={"token": tok, "role": "client", "keepalive": 25})
    assert r.status_code == 201, r.text
    assert r.json() == {"mesh_id": "calm-river-stone-0001"}
    assert svc.calls[-1][1][1].role == "client"
    assert len(c.get("/v1/meshes/calm-river-stone-0001").json()["nodes"]) == 3
    r = c.post("/v1/join", json={"token": tok})
    assert r.status_code == 403 and _err(r)["code"] == "refused"
    r = c.post("/v1/join", json={"token": "nope"})
    assert r.status_code == 403 and "not valid" in _err(r)["message"]


def test_unknown_mesh_is_404_everywhere(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    for method, url, body in [
        ("GET", "/v1/meshes/nope", None),
        ("DELETE", "/v1/meshes/nope", None),
        ("POST", "/v1/meshes/nope/invites", {}),
        ("PUT", "/v1/meshes/nope/alias", {"alias": "a"}),
        ("PUT", "/v1/meshes/nope/services/x", {"value": "1"}),
        ("GET", "/v1/meshes/nope/query?q=nodes", None),
        ("GET", "/v1/graph?meshid=nope", None),
        ("GET", "/api/v1/mesh/nope", None),
    ]:
        r = c.request(method, url, json=body)
        assert r.status_code == 404, (method, url, r.text)
        e = _err(r)
        assert e["code"] == "unknown_mesh" and "nope" in e["message"]


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("POST", "/v1/meshes", {"wgport": 70000}, "wgport"),
        ("POST", "/v1/meshes", {"role": "server"}, "role"),
        ("POST", "/v1/meshes", {"bogus": 1}, "bogus"),
        ("POST", "/v1/meshes/m/invites", {"ttl_s": -5}, "ttl_s"),
        ("POST", "/v1/meshes/m/invites", {"uses": 0}, "uses"),
        ("POST", "/v1/join", {}, "token"),
        ("PUT", "/v1/meshes/m/alias", {"alias": "no spaces!"}, "alias"),
        ("PUT", "/v1/meshes/m/alias", {}, "alias"),
        ("PUT", "/v1/meshes/m/services/bad%20key", {"value": "1"}, "key"),
        ("GET", "/v1/meshes/m/query", None, "q"),
        ("GET", "/v1/graph?format=jpeg", None, "format"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    api: tuple[httpx.Client, FakeNodeService, Path],
    method: str,
    url: str,
    body: object,
    field: str,
) -> None:
    c, _, _ = api
    r = c.request(method, url, json=body)
    assert r.status_code == 422, r.text
    e = _err(r)
    assert e["code"] == "invalid_request"
    assert field in e["message"]


def test_malformed_json_body(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    r = c.post("/v1/join", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "JSON" in _err(r)["message"]


def test_bad_query_expression_is_400(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _svc, _ = api
    mesh_id = c.post("/v1/meshes").json()["mesh_id"]
    r = c.get(f"/v1/meshes/{mesh_id}/query", params={"q": "nodes[?"})
    assert r.status_code == 400
    assert _err(r)["code"] == "invalid_argument"


def test_unknown_route_and_method(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    r = c.get("/v2/whatever")
    assert r.status_code == 404 and _err(r)["code"] == "not_found"
    r = c.patch("/v1/meshes")
    assert r.status_code == 405 and _err(r)["code"] == "method_not_allowed"


def test_internal_error_is_json_without_traceback(
    api: tuple[httpx.Client, FakeNodeService, Path],
) -> None:
    c, _, _ = api
    r = c.get("/v1/meshes/boom")
    assert r.status_code == 500
    e = _err(r)
    assert e["code"] == "internal"
    assert "Traceback" not in r.text and "simulated" not in r.text
    # the server survives
    assert c.get("/v1/health").status_code == 200


def test_graph_formats(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    mesh_id = c.post("/v1/meshes").json()["mesh_id"]
    r = c.get("/v1/graph", params={"meshid": mesh_id})
    assert r.headers["content-type"].startswith("text/vnd.graphviz")
    assert r.text.startswith("graph smegmesh")
    r = c.get("/v1/graph", params={"format": "svg"})
    assert r.headers["content-type"] == "image/svg+xml" and b"<svg" in r.content
    r = c.get("/v1/graph", params={"format": "png"})
    assert r.headers["content-type"] == "image/png" and r.content.startswith(PNG_MAGIC)


def test_prototype_routes(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, svc, _ = api
    r = c.post("/api/v1/mesh/create", json={"port": 51999})
    assert r.status_code == 200
    mesh_id = r.json()["meshid"]
    assert svc.calls[-1][1][0].wgport == 51999
    r = c.post("/api/v1/mesh/create", json={"port": 80})  # prototype: gte=1024
    assert r.status_code == 422 and "port" in _err(r)["message"]

    tok = svc.add_remote_mesh("old-proto-mesh-0002", peers=1)
    r = c.post("/api/v1/mesh/join", json={"token": tok, "meshid": "ignored"})
    assert r.json() == {"status": "success", "meshid": "old-proto-mesh-0002"}

    for url in ("/api/v1/meshes/", "/api/v1/meshes"):
        lst = c.get(url).json()
        assert {m["meshid"] for m in lst} == {mesh_id, "old-proto-mesh-0002"}

    m = c.get("/api/v1/mesh/old-proto-mesh-0002").json()
    assert set(m) == {"meshid", "nodes"}
    peer = next(n for n in m["nodes"].values() if n["alias"] == "peer0")
    assert set(peer) == {
        "alias",
        "wgHost",
        "wgEndpoint",
        "endpoint",
        "timestamp",
        "description",
        "publicKey",
        "routes",
        "services",
        "stats",
    }
    assert m["nodes"][peer["wgHost"]] is not None
    assert peer["routes"] == [{"prefix": "::/0", "path": []}]
    assert set(peer["stats"]) == {
        "totalTransmit",
        "totalReceived",
        "keepaliveInterval",
        "allowedIps",
    }
    assert peer["stats"]["totalTransmit"] == 2_500_000
    assert isinstance(peer["timestamp"], int)
    assert any(n["publicKey"] == SELF_KEY for n in m["nodes"].values())


def test_openapi_documents_routes(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    paths = c.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/meshes",
        "/v1/meshes/{mesh_id}",
        "/v1/meshes/{mesh_id}/invites",
        "/v1/join",
        "/v1/graph",
        "/api/v1/meshes/",
        "/api/v1/mesh/{meshid}",
        "/api/v1/mesh/create",
        "/api/v1/mesh/join",
    ):
        assert p in paths


def test_tcp_requires_bearer_token() -> None:
    with served_tcp(TOKEN) as (base, _), httpx.Client(base_url=base, timeout=10) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.get("/v1/meshes", headers=headers)
            assert r.status_code == 401, headers
            assert _err(r)["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        r = c.post("/api/v1/mesh/create", json={})
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/meshes", headers=auth).json() == []
        assert c.post("/v1/meshes", headers=auth).status_code == 201
        # the OpenAPI document stays readable
        assert c.get("/openapi.json").status_code == 200


def test_unix_app_needs_no_token(api: tuple[httpx.Client, FakeNodeService, Path]) -> None:
    c, _, _ = api
    assert c.get("/v1/meshes").status_code == 200
