"""``smegctl --api URL watch``: the event stream of the daemon --api names.

The fake service of ``api_fake`` served by uvicorn on loopback (HTTP and
HTTPS with a self-signed certificate), ``smegctl`` as a process (``watch``
runs until interrupted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from api_fake import FakeNodeService, LoopThread
from smegmesh.daemon.api import create_app, serve_tcp
from smegmesh.daemon.events import EventBus
from smegmesh.testbed.loopback import short_tmpdir, wait_until
from tls_helpers import self_signed

pytestmark = pytest.mark.timeout(120)

TOKEN = "0123456789abcdef0123456789abcdef"


@dataclass
class Api:
    url: str
    lt: LoopThread
    svc: FakeNodeService
    ca: Path | None  # the self-signed certificate of an https:// API

    def publish(self, alias: str) -> None:
        async def go() -> None:  # on the server's loop: the bus is not thread-safe
            self.svc.events.publish("member.joined", mesh="m", node=b"\x01" * 32, alias=alias)

        self.lt.run(go())


async def _close(bus: EventBus) -> None:
    bus.close()


@pytest.fixture(params=["http", "https"])
def api(request: pytest.FixtureRequest) -> Iterator[Api]:
    svc, lt = FakeNodeService(), LoopThread()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tls: dict[str, Path] = {}
        cert = None
        if request.param == "https":
            cert, key = self_signed(short_tmpdir())
            tls = {"tls_certificate": cert, "tls_key": key}
        server = lt.run(serve_tcp(create_app(svc, token=TOKEN), "127.0.0.1", port, **tls))
        try:
            yield Api(f"{request.param}://127.0.0.1:{port}", lt, svc, cert)
        finally:
            lt.run(_close(svc.events))
            lt.run(server.stop())
    finally:
        lt.close()


def _ctl(*args: str, token: str = TOKEN) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SMEG_SOCKET", "SMEG_API")}
    env["SMEG_API_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "smegmesh.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # see test_events_daemon
    )


def test_watch_follows_the_daemon_given_with_dash_dash_api(api: Api) -> None:
    """``smegctl --api URL watch`` opened /v1/events on the local unix socket
    whatever --api said: "cannot reach smegd at /run/smegmesh/smegd.sock", or,
    on a node with its own smegd, that daemon's events shown as the remote's.
    Now the stream goes to --api's URL, with its token and CA."""
    sock = str(short_tmpdir() / "no-local-smegd.sock")
    ca = ["--api-ca", str(api.ca)] if api.ca else []
    proc = _ctl("--api", api.url, *ca, "--socket", sock, "watch", "--json")
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    pump.start()
    try:
        wait_until(lambda: api.svc.events.subscribers == 1 or proc.poll() is not None, 30, 0.05)
        assert proc.poll() is None, proc.communicate()
        api.publish("remote-one")
        wait_until(lambda: lines, 30, 0.05, "the event on watch's stdout")
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(15)
        pump.join(5)
    ev = json.loads(lines[0])
    assert (ev["type"], ev["alias"]) == ("member.joined", "remote-one")
    assert rc == 0, proc.stderr.read() if proc.stderr else ""


def test_watch_with_dash_dash_api_says_why_it_cannot_follow(api: Api) -> None:
    """A refused token is the one line other commands give, not a local-socket error."""
    if api.ca:  # no --api-ca: the certificate does not verify
        proc = _ctl("--api", api.url, "watch")
        want = f"smegctl: TLS certificate of {api.url} does not verify ("
    else:
        proc = _ctl("--api", api.url, "watch", token="wrong-token-0123456789")
        want = f"smegctl: smegd at {api.url} answered 401 Unauthorized: the token was refused\n"
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, ""), err
    assert err.startswith(want) and err.count("\n") == 1, err
