"""The dashboard's server side (issue 16): login, session cookie, CSRF, assets, ``smegctl ui``.

Real daemons (memory WireGuard backend) over real sockets; the page itself is
tested in a real Chromium by ``test_ui_browser_netns.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from smegmesh.daemon.ui import SessionStore
from smegmesh.testbed.loopback import API_TOKEN, Cluster, Smegd, cluster

# --------------------------------------------------------------------------- sessions


def test_session_store_is_bounded_and_expires() -> None:
    now = [1000.0]
    store = SessionStore(max_sessions=3, ttl_s=60, clock=lambda: now[0])
    first = [store.create() for _ in range(3)]
    assert len(store) == 3
    newest = store.create()  # a fourth drops the oldest
    assert len(store) == 3
    assert store.get(first[0].sid) is None
    assert store.get(newest.sid) is newest
    assert store.get("x" * 500) is None and store.get("") is None and store.get(None) is None
    now[0] += 61
    assert store.get(newest.sid) is None
    store.create()
    assert len(store) == 1  # expired ones are swept


# --------------------------------------------------------------------------- daemon /ui


@pytest.fixture(scope="module")
def one() -> Iterator[Cluster]:
    with cluster(1, api_listen=True) as c:
        yield c


def _base(d: Smegd) -> str:
    return f"http://[::1]:{d.api_port}"


def _login(h: httpx.Client, token: str = API_TOKEN) -> httpx.Response:
    return h.post("/ui/login", data={"token": token})


def _key(r: httpx.Response) -> str:
    """The session's key from the answer to a login (the only place it is given)."""
    assert r.status_code == 200, r.text
    m = re.search(r'name="smeg-session" content="([^"]+)"', r.text)
    assert m, r.text
    return m.group(1)


def test_ui_needs_login_and_refuses_wrong_token(one: Cluster) -> None:
    d = one.daemons[0]
    with httpx.Client(base_url=_base(d), timeout=30) as h:
        r = h.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "login"
        assert h.get("/ui").status_code in (303, 307)  # redirected to /ui/
        r = h.get("/ui/login")
        assert r.status_code == 200 and 'name="token"' in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        r = _login(h, "wrong-token")
        assert r.status_code == 401
        assert "Wrong token" in r.text and "smeg_ui" not in r.headers.get("set-cookie", "")
        assert _login(h, "").status_code == 400
        # the long-lived API token is never accepted in a URL
        r = h.get("/ui/login", params={"token": API_TOKEN})
        assert r.status_code == 200 and "set-cookie" not in r.headers
        # a huge form is refused before it is read
        r = h.post("/ui/login", content=b"token=" + b"a" * 100_000)
        assert r.status_code == 413
        # nothing of the API without a session or token
        assert h.get("/v1/meshes").status_code == 401


def test_ui_session_cookie_authenticates_the_api_and_writes_need_csrf(one: Cluster) -> None:
    d = one.daemons[0]
    with httpx.Client(base_url=_base(d), timeout=30) as h:
        r = _login(h)
        assert 'src="static/signin.js"' in r.text and r.headers["cache-control"] == "no-store"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("smeg_ui=")
        low = cookie.lower()
        assert "httponly" in low and "samesite=strict" in low and "path=/" in low
        assert "secure" not in low  # plain HTTP here; Secure is set over TLS
        csrf = _key(r)
        key = {"X-Smeg-CSRF": csrf}
        mesh_id = h.post("/v1/meshes", headers=key).json()["mesh_id"]
        assert mesh_id in {m["mesh_id"] for m in h.get("/v1/meshes", headers=key).json()}
        # the cookie alone gets nothing, not even a read: a browser sends it to every
        # port of the host, so another local user's server on another port got it
        assert h.get("/v1/meshes").status_code == 401
        assert h.get("/v1/meshes", params={"session": csrf}).status_code == 401  # stream only
        page = h.get("/ui/")
        assert page.status_code == 200 and csrf not in page.text  # the page holds no key
        url = f"/v1/meshes/{mesh_id}/alias"
        # a write with the cookie but without (or with a wrong) CSRF header is refused
        assert h.put(url, json={"alias": "web1"}).status_code == 401
        r = h.put(url, json={"alias": "web1"}, headers={"X-Smeg-CSRF": "nope"})
        assert r.status_code == 401
        r = h.put(url, json={"alias": "web1"}, headers={"X-Smeg-CSRF": csrf})
        assert r.status_code == 200, r.text
        assert d.mesh(mesh_id)["nodes"][0]["alias"] == "web1"
        # the bearer token keeps working, without cookie or CSRF header
        bearer = {"Authorization": f"Bearer {API_TOKEN}"}
        assert httpx.get(f"{_base(d)}/v1/meshes", headers=bearer).status_code == 200
        # sign out: the cookie is dead
        assert h.post("/ui/logout", headers={"X-Smeg-CSRF": csrf}).status_code == 303
        h.cookies.set("smeg_ui", cookie.split(";")[0].split("=", 1)[1])
        assert h.get("/v1/meshes", headers=key).status_code == 401
        assert h.get("/ui/").status_code == 303


def test_ui_assets_come_from_the_package(one: Cluster) -> None:
    d = one.daemons[0]
    with httpx.Client(base_url=_base(d), timeout=30) as h:
        for name, kind in (
            ("cytoscape.min.js", "javascript"),
            ("app.js", "javascript"),
            ("signin.js", "javascript"),
            ("ui.css", "css"),
        ):
            r = h.get(f"/ui/static/{name}")
            assert r.status_code == 200 and kind in r.headers["content-type"], name
            assert r.headers["x-content-type-options"] == "nosniff"
        assert h.get("/ui/static/index.html").status_code == 200  # no secret in it
        for bad in ("../ui.py", "..%2Fui.py", "nope.js", "VENDORED.md"):
            assert h.get(f"/ui/static/{bad}").status_code == 404, bad
        # no reference to anything outside the daemon
        page = _login(h).text + h.get("/ui/").text + h.get("/ui/static/app.js").text
        page += h.get("/ui/static/signin.js").text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


# --------------------------------------------------------------------------- smegctl ui


def _smegctl_ui(d: Smegd) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "smegmesh.cli.main", "--socket", str(d.sock), "ui", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert p.stdout is not None
    line = p.stdout.readline()
    if not line:
        p.kill()
        raise AssertionError(f"smegctl ui printed nothing: {p.communicate()[1]}")
    return p, json.loads(line)["url"]


def test_smegctl_ui_forwards_to_the_socket_after_a_one_time_login(one: Cluster) -> None:
    d = one.daemons[0]
    p, url = _smegctl_ui(d)
    try:
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/ui/login\?token=([\w-]+)", url)
        assert m, url
        base = f"http://127.0.0.1:{m.group(1)}"
        with httpx.Client(base_url=base, timeout=30) as h:
            assert h.get("/v1/meshes").status_code == 401  # no session yet
            assert h.get("/ui/").status_code == 303
            r = h.get(url)
            csrf = _key(r)
            assert "samesite=strict" in r.headers["set-cookie"].lower()
            # the link was good once
            with httpx.Client(base_url=base, timeout=30) as other:
                r2 = other.get(url)
                assert r2.status_code == 401 and "not valid" in r2.text
                assert other.get("/v1/meshes").status_code == 401
            key = {"X-Smeg-CSRF": csrf}
            mesh_id = h.post("/v1/meshes", headers=key).json()["mesh_id"]
            assert h.get(f"/v1/meshes/{mesh_id}").status_code == 401  # the cookie alone
            got: Any = h.get(f"/v1/meshes/{mesh_id}", headers=key).json()
            assert got["mesh_id"] == mesh_id and got["nodes"][0]["is_self"]
            r = h.put(f"/v1/meshes/{mesh_id}/alias", json={"alias": "viaproxy"})
            assert r.status_code == 401  # the key missing
            r = h.put(
                f"/v1/meshes/{mesh_id}/alias",
                json={"alias": "viaproxy"},
                headers={"X-Smeg-CSRF": csrf},
            )
            assert r.status_code == 200, r.text
            assert d.mesh(mesh_id)["nodes"][0]["alias"] == "viaproxy"
            # the daemon's errors pass through
            r = h.get("/v1/meshes/no-such-mesh", headers=key)
            assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_mesh"
            r = h.put(
                f"/v1/meshes/{mesh_id}/description",
                content=b"x" * 200_000,
                headers={"X-Smeg-CSRF": csrf, "Content-Type": "application/json"},
            )
            assert r.status_code == 413
            assert h.get("/openapi.json", headers=key).json()["info"]["title"] == "smegd"
            # DNS rebinding: a page served under another name gets nothing
            bad_host = {**key, "Host": "evil.example"}
            assert h.get("/v1/meshes", headers=bad_host).status_code == 400
    finally:
        p.terminate()
        p.wait(10)


def test_smegctl_ui_forwards_the_event_stream_and_closes_it(one: Cluster) -> None:
    d = one.daemons[0]
    p, url = _smegctl_ui(d)
    try:
        base = url.split("/ui/")[0]
        with httpx.Client(base_url=base, timeout=30) as h:
            csrf = _key(h.get(url))
            mesh_id = h.post("/v1/meshes", headers={"X-Smeg-CSRF": csrf}).json()["mesh_id"]
            with h.stream("GET", "/v1/events", params={"meshid": mesh_id}) as r:
                assert r.status_code == 401  # the cookie alone
            stream = {"meshid": mesh_id, "session": csrf}  # as EventSource sends it
            with h.stream("GET", "/v1/events", params=stream) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                h2 = httpx.Client(base_url=base, cookies=h.cookies, timeout=30)
                h2.put(
                    f"/v1/meshes/{mesh_id}/alias",
                    json={"alias": "streamed"},
                    headers={"X-Smeg-CSRF": csrf},
                ).raise_for_status()
                h2.close()
                seen = ""
                for line in r.iter_lines():
                    seen += line + "\n"
                    if "streamed" in line:
                        break
                assert re.search(r"^id: \d+$", seen, re.M), seen
                assert "event: member.changed" in seen, seen
            # every stream the browser closes is closed upstream too: more than the
            # daemon's limit of concurrent streams, one after the other, all open
            for _ in range(40):
                with h.stream("GET", "/v1/events", params={"session": csrf}) as r:
                    assert r.status_code == 200, r.read()
                    next(r.iter_lines())
            # Ctrl-C (SIGINT) stops it even while a page holds a stream open
            with h.stream("GET", "/v1/events", headers={"X-Smeg-CSRF": csrf}) as r:
                next(r.iter_lines())
                p.send_signal(signal.SIGINT)
                assert p.wait(20) is not None
    finally:
        p.terminate()
        p.wait(10)


def test_session_cookie_is_secure_over_tls() -> None:
    import asyncio

    from smegmesh.daemon.ui import create_ui_app

    store = SessionStore()
    app = create_ui_app(store, lambda t: t == "right")

    async def login() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://node.example") as h:
            return await h.post("/login", data={"token": "right"})

    r = asyncio.run(login())
    assert r.status_code == 200
    low = r.headers["set-cookie"].lower()
    assert "secure" in low and "httponly" in low and "samesite=strict" in low
    assert len(store) == 1


def test_smegctl_ui_errors_are_one_liners(one: Cluster, tmp_path: Any) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "smegmesh.cli.main", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    r = ctl("--socket", str(tmp_path / "none.sock"), "ui")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("smegctl: cannot reach smegd at ") and "Traceback" not in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = ctl("--socket", str(one.daemons[0].sock), "ui", "--port", str(port))
    assert r.returncode == 1, r.stdout
    assert r.stderr.startswith(f"smegctl: --port {port}: cannot listen on 127.0.0.1")
    assert "Traceback" not in r.stderr
