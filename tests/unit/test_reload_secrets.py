"""SIGHUP and the TCP API's secrets: a token rotated in its file, a renewed certificate.

The reload compared the keys' values (the paths) only: the same file with a new
token (or certbot's renewed certificate, whose deploy hook reloads) changed
"nothing that applies live", and the TCP API kept the old - perhaps leaked -
token, made once at start. A real daemon in this process, its TCP API on ::1."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from smegmesh.daemon.config import load_config
from smegmesh.daemon.node import Daemon
from smegmesh.daemon.reload import reload_config
from smegmesh.testbed.ports import free_port
from tls_helpers import self_signed

OLD = "old-token-0123456789"
NEW = "new-token-9876543210"


def _config(root: Path, tls: bool) -> tuple[Path, int]:
    port = free_port()
    lines = [
        "stubWg: true",
        f"stateDir: {root / 'state'}",
        f"controlSocket: {root / 's.sock'}",
        f"gRPCPort: {free_port()}",
        "bindAddress: '::1'",
        f"apiListen: '[::1]:{port}'",
        f"apiTokenFile: {root / 'token'}",
    ]
    if tls:
        lines += [f"apiTlsCertificate: {root / 'api.crt'}", f"apiTlsKey: {root / 'api.key'}"]
    f = root / "c.yaml"
    f.write_text("\n".join(lines) + "\n")
    return f, port


async def _status(url: str, token: str, verify: Any = False) -> int:
    async with httpx.AsyncClient(verify=verify, timeout=10) as c:
        r = await c.get(f"{url}/v1/meshes", headers={"Authorization": f"Bearer {token}"})
        return r.status_code


def test_a_rotated_token_applies_at_the_reload(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "token").write_text(OLD + "\n")
    f, port = _config(root, tls=False)
    url = f"http://[::1]:{port}"

    async def main() -> None:
        d = Daemon(load_config(f))
        await d.start()
        try:
            assert await _status(url, OLD) == 200
            (root / "token").write_text(NEW + "\n")  # rotated in place, then SIGHUP
            with caplog.at_level(logging.INFO, logger="smegd"):
                assert reload_config(d, f)
            assert await _status(url, OLD) == 401, "the old token still opens the API"
            assert await _status(url, NEW) == 200
        finally:
            await d.stop()

    asyncio.run(main())
    assert "apiTokenFile" in caplog.text and "old" in caplog.text, caplog.text
    assert OLD not in caplog.text and NEW not in caplog.text  # never a token in the log


def _served_certificate(port: int) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket

    with (
        socket.create_connection(("::1", port), timeout=10) as s,
        ctx.wrap_socket(s) as t,
    ):
        der = t.getpeercert(binary_form=True)
    assert der
    return der


def test_a_renewed_certificate_is_served_after_the_reload(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (root / "token").write_text(OLD + "\n")
    first = root / "first"
    first.mkdir()
    for p in self_signed(first):
        shutil.copy(p, root / p.name)
    f, port = _config(root, tls=True)

    async def main() -> None:
        d = Daemon(load_config(f))
        await d.start()
        loop = asyncio.get_running_loop()
        try:
            before = await loop.run_in_executor(None, _served_certificate, port)
            assert before == ssl.PEM_cert_to_DER_cert((first / "api.crt").read_text())
            self_signed(root)  # renewed in place (certbot), then SIGHUP
            with caplog.at_level(logging.INFO, logger="smegd"):
                assert reload_config(d, f)
            after = await loop.run_in_executor(None, _served_certificate, port)
            assert after == ssl.PEM_cert_to_DER_cert((root / "api.crt").read_text()), (
                "the TCP API still serves the old certificate"
            )
        finally:
            await d.stop()

    asyncio.run(main())
    assert "apiTlsCertificate" in caplog.text, caplog.text


def test_a_new_token_ends_the_dashboard_sessions_opened_with_the_old_one() -> None:
    """A leaked token may have opened a dashboard session: rotating it ends them all,
    and the login form takes the new token only."""
    from smegmesh.daemon.api import create_app

    app: Any = create_app(None, token=OLD)  # type: ignore[arg-type]

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            r = await c.post("/ui/login", data={"token": OLD})
            assert r.status_code == 200 and "smeg-session" in r.text  # signed in: the key
            key = {"X-Smeg-CSRF": r.text.split('name="smeg-session" content="')[1].split('"')[0]}
            assert (await c.get("/ui/")).status_code == 200  # the session's cookie opens it
            assert (await c.get("/v1/meshes", headers=key)).status_code != 401
            app.set_token(NEW)
            assert (await c.get("/ui/")).status_code == 303  # back to the login form
            assert (await c.get("/v1/meshes", headers=key)).status_code == 401
            assert (await c.post("/ui/login", data={"token": OLD})).status_code == 401
            assert (await c.post("/ui/login", data={"token": NEW})).status_code == 200

    asyncio.run(main())
