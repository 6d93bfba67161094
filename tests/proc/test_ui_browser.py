"""The dashboard in a real headless Chromium against real daemons (memory WireGuard backend).

Cheaper than the namespace test (``test_ui_browser_netns.py``): two meshes
joined by a bridge (this node is in both), a client under its peer, an exit;
admin actions through the page, each behind its confirmation step.
"""

from __future__ import annotations

import http.server
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from envcheck import missing
from smegmesh.testbed.browser import chromium_missing, chromium_page
from smegmesh.testbed.loopback import API_TOKEN, Cluster, cluster, wait_converged


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    reason = chromium_missing()
    if reason:  # a dev dependency and a Debian package: missing in CI is a failure, not a skip
        missing(reason)
    with chromium_page(tmp_path / "profile") as p:
        errors: list[str] = []
        p.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )  # HTTP errors are expected (a refused alias); script and CSP errors are not
        p.on("pageerror", lambda e: errors.append(str(e)))
        yield p
        # no script error, and nothing the Content-Security-Policy had to block (Cytoscape
        # sets inline styles: style-src allows them, scripts are the package's only)
        assert not errors, errors


def _rows(page: Any, mesh_id: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        f'section.mesh[data-mesh="{mesh_id}"] tbody tr',
        "els => els.map(e => ({key: e.dataset.key, alias: e.dataset.alias}))",
    )
    return rows


@pytest.fixture
def two_meshes() -> Iterator[tuple[Cluster, str, str]]:
    with cluster(1, api_listen=True) as c:
        c.add(3)
        a, b, cl, ex = c.daemons
        m1 = a.api("POST", "/v1/meshes")["mesh_id"]
        tok = a.api("POST", f"/v1/meshes/{m1}/invites", json={"uses": 2})["token"]
        b.api("POST", "/v1/join", json={"token": tok})
        cl.api("POST", "/v1/join", json={"token": tok, "role": "client"})
        m2 = a.api("POST", "/v1/meshes")["mesh_id"]
        tok = a.api("POST", f"/v1/meshes/{m2}/invites")["token"]
        ex.api("POST", "/v1/join", json={"token": tok, "advertise_defaults": True})
        wait_converged([a, b, cl], m1)
        wait_converged([a, ex], m2)
        yield c, m1, m2


def test_dashboard_meshes_bridge_and_admin_actions(
    page: Any, two_meshes: tuple[Cluster, str, str], tmp_path: Path
) -> None:
    c, m1, m2 = two_meshes
    a, b, cl, ex = c.daemons
    base = f"http://[::1]:{a.api_port}"
    page.goto(f"{base}/ui/login")
    page.fill("#token", API_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/ui/")
    page.wait_for_function("() => document.querySelectorAll('section.mesh tbody tr').length === 5")
    assert {r["key"] for r in _rows(page, m1)} == a.mesh_keys(m1)
    assert {r["key"] for r in _rows(page, m2)} == a.mesh_keys(m2)
    # this node is in both meshes: a bridge; the node with ::/0 is an exit; the
    # client hangs under its peer
    page.wait_for_function("() => window.smeg.cy && window.smeg.cy.edges('.bridge').length === 1")
    exits = page.evaluate("() => window.smeg.cy.nodes('.exit').map(n => n.data('key'))")
    assert exits == [ex.self_key(m2)]
    assert page.locator(f'tr[data-key="{cl.self_key(m1)}"]').inner_text().count("via") == 1
    # evict is offered only when the API has the route
    has_evict = any(
        re.fullmatch(r"/v1/meshes/\{[^}]+\}/evict", p)
        for p in httpx.get(
            f"{base}/openapi.json", headers={"Authorization": f"Bearer {API_TOKEN}"}
        ).json()["paths"]
    )
    page.click(f'tr[data-key="{b.self_key(m1)}"]')
    page.wait_for_selector("#panel:not([hidden])")
    assert page.locator('#panel [data-action="evict"]').count() == (1 if has_evict else 0)

    # set this node's alias from the page: nothing happens before the confirmation
    section = f'section.mesh[data-mesh="{m1}"]'
    page.click(f'{section} [data-action="alias"]')
    page.fill("#f-alias", "dash")
    page.click("#dialog-ok")  # Continue
    confirm = page.wait_for_selector("#dialog-confirm:not([hidden])")
    assert "dash" in confirm.inner_text()
    assert a.node(m1, a.self_key(m1))["alias"] == ""  # type: ignore[index]
    page.click("#dialog-ok")  # Confirm
    page.wait_for_selector(f'{section} tr[data-alias="dash"]')
    assert a.node(m1, a.self_key(m1))["alias"] == "dash"  # type: ignore[index]

    # a bad value: the daemon's message is shown in the dialog
    page.click(f'{section} [data-action="alias"]')
    page.fill("#f-alias", "not a label!")
    page.click("#dialog-ok")
    page.click("#dialog-ok")
    err = page.wait_for_selector("#dialog-error:not([hidden])")
    assert "alias" in err.inner_text().lower()
    page.click("#dialog-cancel")

    # a service, then an invitation token
    page.click(f'{section} [data-action="service"]')
    page.fill("#f-key", "http")
    page.fill("#f-value", "8080")
    page.click("#dialog-ok")
    page.click("#dialog-ok")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{section} tr[data-alias=dash] td')]"
        ".some(td => td.textContent === 'http')"
    )
    assert a.node(m1, a.self_key(m1))["services"] == {"http": "8080"}  # type: ignore[index]
    page.click(f'{section} [data-action="invite"]')
    page.click("#dialog-ok")
    page.click("#dialog-ok")
    token = page.wait_for_selector("#invite-token").input_value()
    assert len(token) > 40
    page.click("#dialog-ok")  # Close

    # search by alias
    page.fill("#search", "dash")
    page.wait_for_function("() => document.querySelectorAll('section.mesh tbody tr').length === 1")
    page.fill("#search", "")
    page.click(f'{section} tr[data-alias="dash"]')
    page.screenshot(path=str(tmp_path / "two-meshes.png"))
    if os.environ.get("SMEG_UI_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["SMEG_UI_SCREENSHOTS"], "two-meshes.png"))


def test_evict_is_offered_once_the_api_has_the_route(
    page: Any, two_meshes: tuple[Cluster, str, str]
) -> None:
    """The page looks for ``POST /v1/meshes/{id}/evict`` in the OpenAPI document at run time.

    The document is given the route here (the daemon may not have it yet), and
    the POST is answered by the test: the button appears on another node's
    panel, never on this node's, and sends the node's key after confirmation.
    """
    c, m1, _ = two_meshes
    a, b, _, _ = c.daemons
    base = f"http://[::1]:{a.api_port}"
    doc = httpx.get(f"{base}/openapi.json", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    doc["paths"]["/v1/meshes/{mesh_id}/evict"] = {
        "post": {
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"node": {"type": "string"}},
                            "required": ["node"],
                        }
                    }
                }
            },
            "responses": {"200": {"description": "ok"}},
        }
    }
    posted: list[tuple[str, Any, str | None]] = []

    def evict_route(route: Any) -> None:
        req = route.request
        posted.append((req.url, req.post_data_json, req.headers.get("x-smeg-csrf")))
        route.fulfill(status=200, content_type="application/json", body='{"ok": true}')

    page.route("**/openapi.json", lambda r: r.fulfill(json=doc))
    page.route("**/v1/meshes/*/evict", evict_route)
    page.goto(f"{base}/ui/login")
    page.fill("#token", API_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_function("() => document.querySelectorAll('section.mesh tbody tr').length === 5")
    page.click(f'section.mesh[data-mesh="{m1}"] tr[data-key="{a.self_key(m1)}"]')
    page.wait_for_selector("#panel:not([hidden])")
    assert page.locator('#panel [data-action="evict"]').count() == 0  # not on itself
    page.click(f'section.mesh[data-mesh="{m1}"] tr[data-key="{b.self_key(m1)}"]')
    page.click('#panel [data-action="evict"]')
    page.click("#dialog-ok")  # Continue: shows what will happen
    assert "Evict" in page.inner_text("#dialog-confirm")
    assert not posted
    page.click("#dialog-ok")  # Confirm
    page.wait_for_function("() => !document.querySelector('#dialog').open")
    assert len(posted) == 1
    url, body, csrf = posted[0]
    assert url.endswith(f"/v1/meshes/{m1}/evict")
    assert body == {"node": b.self_key(m1)} and csrf


class _OtherPort(http.server.BaseHTTPRequestHandler):
    """Another local user's web server, on another port of 127.0.0.1."""

    cookies: list[str] = []

    def do_GET(self) -> None:
        _OtherPort.cookies.append(self.headers.get("Cookie", ""))
        body = b"<!doctype html><title>elsewhere</title>hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a: object) -> None:
        pass


def test_the_cookie_another_port_gets_opens_nothing(page: Any) -> None:
    """A browser sends a cookie to every port of its host: a page of another local
    user's server on 127.0.0.1 got ``smegctl ui``'s session cookie, and with it alone
    the dashboard page (whose HTML held the session's key) and so the whole API,
    the root-only socket included (found by a review). The key is now given only
    in the answer to the login and kept in the origin's storage."""
    import asyncio
    import threading

    import uvicorn

    from api_fake import LoopThread, served_unix
    from smegmesh.cli.ui import OneTimeToken, create_proxy_app, loopback_socket

    with served_unix() as (sock_path, _svc):
        uds = httpx.HTTPTransport(uds=str(sock_path))
        with httpx.Client(transport=uds, base_url="http://smegd") as ctl:
            mesh = ctl.post("/v1/meshes").json()["mesh_id"]
        token, lsock = OneTimeToken(), loopback_socket()
        base = f"http://127.0.0.1:{lsock.getsockname()[1]}"
        server = uvicorn.Server(
            uvicorn.Config(create_proxy_app(str(sock_path), token), log_level="warning")
        )
        lt = LoopThread()
        fut = asyncio.run_coroutine_threadsafe(server.serve(sockets=[lsock]), lt.loop)
        other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherPort)
        other.daemon_threads = True  # a preconnect that sends nothing holds no one up
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            page.goto(f"{base}/ui/login?token={token.value}")
            page.wait_for_selector(f'section.mesh[data-mesh="{mesh}"]')  # signed in, live
            page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
            stolen = [c for c in _OtherPort.cookies if "smeg_ui=" in c]
            assert stolen, "the browser no longer sends the cookie: this test shows nothing"
            sid = re.search(r"smeg_ui=([^;]+)", stolen[0]).group(1)  # type: ignore[union-attr]
            with httpx.Client(base_url=base, cookies={"smeg_ui": sid}, timeout=30) as c:
                shell = c.get("/ui/")
                assert shell.status_code == 200 and "smeg-session" not in shell.text
                assert c.get("/v1/meshes").status_code == 401
                assert c.get("/v1/events").status_code == 401
                r = c.put(f"/v1/meshes/{mesh}/alias", json={"alias": "owned"})
                assert r.status_code == 401
        finally:
            other.shutdown()
            server.should_exit = True
            fut.result(10)
            lt.close()
