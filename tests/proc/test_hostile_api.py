"""Hostile input against real daemons' APIs (issue 12): limits before work, clear errors.

Real ``smegd`` processes (memory WireGuard backend) on loopback. Each test
names the finding of issue 12 it covers.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smegmesh.testbed.loopback import API_TOKEN, Cluster, create_mesh, wait_until
from tls_helpers import self_signed

pytestmark = pytest.mark.timeout(240)

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def pair() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.add(1, api_listen=True, wait=False)
        c.add(1, wait=False)
        c.wait_ready()
        yield c
        assert not c.tracebacks(), [d.log()[-4000:] for d in c.daemons]
    finally:
        c.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _stream(port: int, head: bytes, mib: int) -> tuple[bytes, int]:
    """Send ``head`` then up to ``mib`` MiB of body until the server answers or closes.

    Returns the start of the answer and how many MiB were sent.
    """
    sent = 0
    answer = b""
    chunk = b"x" * (1 << 20)
    with socket.create_connection(("::1", port), timeout=10) as s:
        s.sendall(head)
        s.setblocking(False)
        while sent < mib:
            try:
                answer += s.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer:
                break
            try:
                s.settimeout(5)
                s.sendall(chunk)
                sent += 1
            except OSError:
                break
            finally:
                s.setblocking(False)
        s.settimeout(10)
        while b"\r\n\r\n" not in answer:
            try:
                more = s.recv(65536)
            except OSError:
                break
            if not more:
                break
            answer += more
    return answer, sent


# --------------------------------------------------------------------------- finding 4


def test_tcp_api_refuses_200mib_bodies_without_growing(pair: Cluster) -> None:
    """Finding 4: a 200 MiB body without a token took smegd from 84 to 685 MB RSS."""
    a = pair.daemons[0]
    assert a.proc is not None
    big = 200 << 20
    before = rss_kib(a.proc.pid)
    t0 = time.monotonic()
    answer, sent = _stream(
        a.api_port,
        f"POST /v1/meshes HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n".encode(),
        200,
    )
    took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"www-authenticate: Bearer" in answer.lower().replace(b"bearer", b"Bearer")
    assert took < 10, took
    # with the token: refused from its Content-Length, and a chunked one once past the limit
    auth = f"Authorization: Bearer {API_TOKEN}\r\n"
    answer, _ = _stream(
        a.api_port,
        f"POST /v1/meshes HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {big}\r\n\r\n".encode(),
        200,
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    head = f"POST /v1/join HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n"
    body_head = f"{200 << 20:x}\r\n".encode()  # one 200 MiB chunk
    answer, _ = _stream(a.api_port, head.encode() + body_head, 200)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    after = rss_kib(a.proc.pid)
    print(f"RSS before {before} KiB, after {after} KiB, first body sent: {sent} MiB")
    assert after - before < 30 * 1024, (before, after)
    assert a.ready()


def test_openapi_pages_and_health_on_tcp(pair: Cluster) -> None:
    """Finding 4: /docs, /redoc and /openapi.json answered without a token."""
    a = pair.daemons[0]
    with httpx.Client(base_url=f"http://[::1]:{a.api_port}", timeout=30) as h:
        for page in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
            r = h.get(page)
            assert r.status_code == 401, (page, r.status_code)
            assert r.json()["error"]["code"] == "unauthorized"
        assert h.get("/openapi.json", headers=AUTH).json()["paths"]
        # health: no token needed, status only
        assert h.get("/v1/health").json() == {"ok": True}
        assert h.get("/v1/health", headers=AUTH).json()["version"]
    # the unix socket keeps working without a token
    assert a.api("GET", "/openapi.json")["paths"]


# --------------------------------------------------------------------------- finding 3


@pytest.mark.parametrize("endpoint", ["garbage", "[::1", "[::1]:0", "host:99999", "a b:1"])
def test_malformed_bootstrap_endpoint_is_400_and_leaves_nothing(
    pair: Cluster, endpoint: str
) -> None:
    """Finding 3: a 500 with a traceback, and the mesh left stuck in "joining"."""
    from smegmesh.core.invite import Bootstrap, parse_token

    a, b = pair.daemons[:2]
    mesh_id = a.api("POST", "/v1/meshes")["mesh_id"]
    good = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"uses": 1})["token"]
    real = parse_token(good)
    b0 = real.bootstrap[0]
    bad = dataclasses.replace(real, bootstrap=(Bootstrap(endpoint, b0.tls_fp, b0.wg_key),))
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(b.sock)), base_url="http://smegd", timeout=60
    ) as c:
        r = c.post("/v1/join", json={"token": bad.encode()})
        assert r.status_code == 400, r.text
        assert "bootstrap endpoint" in r.json()["error"]["message"]
        assert mesh_id not in b.mesh_ids()
        # and the good token still works afterwards (no "already a member")
        r = c.post("/v1/join", json={"token": good})
        assert r.status_code == 201, r.text
    assert mesh_id in b.mesh_ids()
    b.api("DELETE", f"/v1/meshes/{mesh_id}")


@pytest.mark.parametrize("endpoint", ["garbage", "[::1", "[::1]", "::1:80", "h:0", "\u00e9:1"])
def test_parse_token_checks_bootstrap_endpoints(endpoint: str) -> None:
    from smegmesh.core.invite import Bootstrap, TokenError, new_token, parse_token

    boot = Bootstrap(endpoint, b"f" * 32, b"k" * 32)
    tok = new_token(
        "amber-otter-lamp-0a1b", now_ms=1, ttl_ms=10, uses=1, bootstrap=[boot], secret=bytes(16)
    )
    with pytest.raises(TokenError, match="invalid bootstrap endpoint"):
        parse_token(tok.encode())
    good = Bootstrap("[::1]:4000", b"f" * 32, b"k" * 32)
    ok = new_token(
        "amber-otter-lamp-0a1b", now_ms=1, ttl_ms=10, uses=1, bootstrap=[good], secret=bytes(16)
    )
    assert parse_token(ok.encode()).bootstrap == (good,)


# --------------------------------------------------------------------------- finding 5


@pytest.mark.parametrize(
    "q", ["not_null()", "nodes[0:-1:0]", "`" + "[" * 500 + "]" * 500 + "`", "`1e999`"]
)
def test_hostile_queries_are_400(pair: Cluster, q: str) -> None:
    """Finding 5: three JMESPath queries gave a 500 with a traceback."""
    a = pair.daemons[0]
    mesh_id = create_mesh(a, [])
    with httpx.Client(base_url=f"http://[::1]:{a.api_port}", timeout=60, headers=AUTH) as h:
        r = h.get(f"/v1/meshes/{mesh_id}/query", params={"q": q})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_argument" and err["message"], err
    r2 = a.ctl("query-mesh", "--meshid", mesh_id, "--query", q, code=None)
    assert r2.code == 1 and r2.stderr.startswith("smegctl: ") and "Traceback" not in r2.stderr


# --------------------------------------------------------------------------- must-exist 3


def _battery(mesh_id: str, token: str) -> list[tuple[str, str, dict[str, Any]]]:
    from smegmesh.core.invite import parse_token

    tok = parse_token(token)
    long_token = "smeg1." + "A" * 5000
    deep = "[" * 20000 + "]" * 20000
    return [
        # ids
        ("GET", "/v1/meshes/" + "x" * 200, {}),
        ("GET", "/v1/meshes/%00%01", {}),
        ("GET", "/v1/meshes/..%2F..%2Fetc", {}),
        ("GET", "/v1/meshes/\u00e9t\u00e9", {}),
        ("DELETE", "/v1/meshes/nope-nope-nope-0000", {}),
        ("PUT", f"/v1/meshes/{mesh_id}/services/" + "k" * 100, {"json": {"value": "x"}}),
        ("PUT", f"/v1/meshes/{mesh_id}/services/bad key", {"json": {"value": "x"}}),
        ("DELETE", f"/v1/meshes/{mesh_id}/services/absent", {}),
        ("GET", "/api/v1/mesh/" + "y" * 300, {}),
        # tokens
        ("POST", "/v1/join", {"json": {"token": ""}}),
        ("POST", "/v1/join", {"json": {"token": "garbage"}}),
        ("POST", "/v1/join", {"json": {"token": long_token}}),
        ("POST", "/v1/join", {"json": {"token": "smeg1.!!!!"}}),
        ("POST", "/v1/join", {"json": {"token": "smeg1." + "gqFh"}}),
        ("POST", "/v1/join", {"json": {"token": token}}),  # already a member: 409
        (
            "POST",
            "/v1/join",
            {"json": {"token": dataclasses.replace(tok, expiry_ms=1).encode()}},
        ),
        ("POST", "/api/v1/mesh/join", {"json": {"token": "garbage"}}),
        # bodies
        ("POST", "/v1/join", {"content": b"{not json"}),
        ("POST", "/v1/join", {"content": b"[]"}),
        ("POST", "/v1/join", {"content": deep.encode()}),
        ("POST", "/v1/join", {"content": b"\xff\xfe\x00"}),
        ("POST", "/v1/join", {"json": {"token": 12}}),
        ("POST", "/v1/meshes", {"json": {"wgport": 10**30}}),
        ("POST", "/v1/meshes", {"json": {"wgport": "1"}}),
        ("POST", "/v1/meshes", {"json": {"role": "server"}}),
        ("POST", "/v1/meshes", {"json": {"endpoint": "not a host!"}}),
        ("POST", f"/v1/meshes/{mesh_id}/invites", {"json": {"ttl_s": -1}}),
        ("POST", f"/v1/meshes/{mesh_id}/invites", {"json": {"uses": 0}}),
        ("POST", f"/v1/meshes/{mesh_id}/invites", {"json": {"uses": 10**20}}),
        ("POST", f"/v1/meshes/{mesh_id}/invites", {"json": {"ttl_s": 1e308}}),
        ("PUT", f"/v1/meshes/{mesh_id}/alias", {"json": {"alias": "-bad-"}}),
        ("PUT", f"/v1/meshes/{mesh_id}/alias", {"json": {"alias": "a" * 64}}),
        ("PUT", f"/v1/meshes/{mesh_id}/alias", {"json": {}}),
        ("PUT", f"/v1/meshes/{mesh_id}/description", {"json": {"description": "d" * 300}}),
        ("PUT", f"/v1/meshes/{mesh_id}/description", {"content": b'{"description": "\\ud800"}'}),
        ("PUT", f"/v1/meshes/{mesh_id}/services/web", {"json": {"value": "v" * 300}}),
        ("POST", "/api/v1/mesh/create", {"json": {"port": -5}}),
        # queries
        ("GET", f"/v1/meshes/{mesh_id}/query", {}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": ""}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "x" * 5000}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "not_null()"}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "nodes[0:-1:0]"}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "length(`1`)"}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "[@,@]|" * 100 + "@"}}),
        ("GET", f"/v1/meshes/{mesh_id}/query", {"params": {"q": "sum([`1e308`,`1e308`])"}}),
        # graphs
        ("GET", "/v1/graph", {"params": {"format": "gif"}}),
        ("GET", "/v1/graph", {"params": {"format": ""}}),
        ("GET", "/v1/graph", {"params": {"meshid": "no-such-mesh-at-all"}}),
        ("GET", "/v1/graph", {"params": {"meshid": "m" * 200}}),
        # methods and routes
        ("PATCH", "/v1/meshes", {}),
        ("GET", "/v2/anything", {}),
    ]


def test_bad_input_battery_is_4xx_with_a_message(pair: Cluster) -> None:
    """Must-exist 3: every input that reaches the API gets a 4xx with a message."""
    a = pair.daemons[0]
    mesh_id = create_mesh(a, [])
    token = a.api("POST", f"/v1/meshes/{mesh_id}/invites")["token"]
    clients = {
        "unix": httpx.Client(
            transport=httpx.HTTPTransport(uds=str(a.sock)), base_url="http://smegd", timeout=60
        ),
        "tcp": httpx.Client(base_url=f"http://[::1]:{a.api_port}", headers=AUTH, timeout=60),
    }
    before = a.mesh_ids()
    failures = []
    try:
        for where, c in clients.items():
            for method, path, kw in _battery(mesh_id, token):
                r = c.request(method, path, **kw)
                ok = 400 <= r.status_code < 500
                try:
                    err = r.json()["error"]
                    ok = ok and bool(err["code"]) and bool(err["message"])
                except (ValueError, KeyError, TypeError):
                    ok = False
                if not ok:
                    failures.append((where, method, path[:60], r.status_code, r.text[:200]))
    finally:
        for c in clients.values():
            c.close()
    assert not failures, "\n".join(map(str, failures))
    assert a.mesh_ids() == before, "a refused request changed the meshes"
    assert "Traceback" not in a.log()
    assert a.ready()


# --------------------------------------------------------------------------- config


def _check(cfg: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    p = tmp / "smegd.yaml"
    p.write_text(json.dumps(cfg))
    return subprocess.run(
        [sys.executable, "-m", "smegmesh.daemon.main", "--check", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_api_token_file_and_tls_config_errors(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "o").mkdir()
    other_cert, _ = self_signed(tmp_path / "o")
    short = tmp_path / "short.token"
    short.write_text("tiny-secret\n")
    good = tmp_path / "good.token"
    good.write_text("a-long-enough-secret-token-123\n")
    base = {"stubWg": True, "apiListen": "[::1]:18999"}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({**base, "apiTokenFile": str(short)}, ["apiTokenFile", "too short", str(short)]),
        ({**base, "apiTokenFile": str(tmp_path / "none")}, ["apiTokenFile", "not found"]),
        ({**base, "apiTokenFile": str(tmp_path)}, ["apiTokenFile", "cannot read"]),
        ({**base, "apiTokenFile": str(good), "apiToken": "x" * 20}, ["apiTokenFile", "not both"]),
        ({**base, "apiTokenFile": str(good), "apiTlsCertificate": str(cert)}, ["apiTlsKey"]),
        (
            {**base, "apiTokenFile": str(good), "apiTlsCertificate": str(cert), "apiTlsKey": "/x"},
            ["apiTlsKey", "not found"],
        ),
        (  # a key that does not match the certificate
            {
                **base,
                "apiTokenFile": str(good),
                "apiTlsCertificate": str(other_cert),
                "apiTlsKey": str(key),
            },
            ["apiTlsCertificate", str(key)],
        ),
        ({"stubWg": True, "apiListen": "[::1]:18999"}, ["apiToken", "apiTokenFile"]),
    ]
    for cfg, words in cases:
        r = _check(cfg, tmp_path)
        assert r.returncode == 2, (cfg, r)
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        for w in words:
            assert w in r.stderr, (w, r.stderr)
        assert "tiny-secret" not in r.stderr, "the token is never echoed"
    ok = _check(
        {**base, "apiTokenFile": str(good), "apiTlsCertificate": str(cert), "apiTlsKey": str(key)},
        tmp_path,
    )
    assert ok.returncode == 0, ok
    assert "without TLS" not in ok.stdout + ok.stderr
    exposed = _check({**base, "apiListen": "[::]:18999", "apiTokenFile": str(good)}, tmp_path)
    assert exposed.returncode == 0, exposed
    assert "apiListen" in exposed.stdout + exposed.stderr
    assert "without TLS" in exposed.stdout + exposed.stderr


def test_token_file_and_tls_on_a_real_daemon(tmp_path: Path) -> None:
    """Must-exist 4: apiTokenFile, apiTlsCertificate/apiTlsKey, and the exposure warning."""
    cert, key = self_signed(tmp_path)
    token = "file-token-0123456789abcdef"
    tf = tmp_path / "api.token"
    tf.write_text(token + "\n")
    tf.chmod(0o600)
    c = Cluster()
    try:
        tls_cfg = {
            "apiToken": None,
            "apiTokenFile": str(tf),
            "apiTlsCertificate": str(cert),
            "apiTlsKey": str(key),
        }
        (tls,) = c.add(1, api_listen=True, extra=tls_cfg, wait=False)
        (clear,) = c.add(1, api_listen=True, wait=False)
        clear.stop()
        clear.extra = {"apiListen": f"[::]:{clear.api_port}"}
        clear.start()
        c.wait_ready()
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=f"https://[::1]:{tls.api_port}", verify=ctx, timeout=30) as h:
            assert h.get("/v1/health").json() == {"ok": True}
            assert h.get("/v1/meshes").status_code == 401
            r = h.get("/v1/meshes", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert h.get("/v1/meshes", headers=AUTH).status_code == 401, "the YAML token is gone"
        with (
            httpx.Client(base_url=f"http://[::1]:{tls.api_port}", timeout=10) as h,
            pytest.raises(httpx.HTTPError),
        ):
            h.get("/v1/health").json()
        assert token not in tls.log()
        assert "without TLS" not in tls.log()
        wait_until(lambda: "without TLS" in clear.log(), 30, what="the exposure warning")
        lines = [ln for ln in clear.log().splitlines() if "without TLS" in ln]
        assert all("warning" in ln.lower() for ln in lines), lines
    finally:
        c.close()
