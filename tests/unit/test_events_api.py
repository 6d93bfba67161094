"""``GET /v1/events`` served for real (uvicorn on a unix socket / TCP) over a fake service."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api_fake import FakeNodeService, LoopThread, short_tmpdir
from smegmesh.cli.watch import SseParser
from smegmesh.daemon.api import ApiServer, create_app, serve_tcp, serve_unix
from smegmesh.daemon.events import EventBus
from smegmesh.testbed.loopback import wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token-0123456789"
MESH = "amber-falcon-river-k7q2"


@dataclass
class Served:
    lt: LoopThread
    svc: FakeNodeService
    server: ApiServer
    path: str

    @property
    def bus(self) -> EventBus:
        return self.svc.events

    def publish(self, n: int = 1, type: str = "member.joined", **kw: Any) -> None:
        """``n`` events, published on the server's loop (the bus is not thread-safe)."""

        async def go() -> None:
            for _ in range(n):
                self.bus.publish(type, **kw)

        self.lt.run(go())

    def client(self, timeout: float = 10) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=self.path)
        return httpx.Client(transport=transport, base_url="http://smegd", timeout=timeout)


@pytest.fixture
def served() -> Iterator[Served]:
    svc = FakeNodeService()
    path = str(short_tmpdir() / "smegd.sock")
    lt = LoopThread()
    try:
        server = lt.run(serve_unix(create_app(svc), path))
        s = Served(lt, svc, server, path)
        try:
            yield s
        finally:
            lt.run(_close(svc.events))
            lt.run(server.stop())
    finally:
        lt.close()


async def _close(bus: EventBus) -> None:
    bus.close()


def read_events(resp: httpx.Response, n: int) -> list[dict[str, Any]]:
    """The next ``n`` events of an open stream (with their SSE id and event name checked)."""
    parser = SseParser()
    out: list[dict[str, Any]] = []
    for line in resp.iter_lines():
        msg = parser.line(line)
        if msg is None:
            continue
        sid, name, data = msg
        ev = json.loads(data)
        assert sid == str(ev["seq"]) and name == ev["type"], msg
        out.append(ev)
        if len(out) == n:
            break
    return out


def open_and_wait_subscribed(s: Served, c: httpx.Client, **kw: Any) -> Any:
    cm = c.stream("GET", "/v1/events", **kw)
    resp = cm.__enter__()
    assert resp.status_code == 200, resp.read()
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    return cm, resp


def test_stream_delivers_events_in_order_with_increasing_ids(served: Served) -> None:
    with served.client() as c:
        cm, resp = open_and_wait_subscribed(served, c)
        try:
            wait_until(lambda: served.bus.subscribers == 1, 10, 0.02, "the subscription")
            served.publish(100, mesh=MESH, node=b"\x01" * 32, alias="db1")
            evs = read_events(resp, 100)
        finally:
            cm.__exit__(None, None, None)
    assert [e["seq"] for e in evs] == list(range(1, 101))
    e = evs[0]
    assert set(e) == {"seq", "time", "type", "mesh", "node", "alias", "detail"}
    assert (e["type"], e["mesh"], e["alias"]) == ("member.joined", MESH, "db1")
    assert abs(e["time"] - time.time()) < 60


def test_reconnect_with_last_event_id(served: Served) -> None:
    served.publish(30)
    with served.client() as c:
        cm, resp = open_and_wait_subscribed(served, c, headers={"Last-Event-ID": "0"})
        first = read_events(resp, 30)
        cm.__exit__(None, None, None)
        served.publish(20)  # while disconnected
        cm, resp = open_and_wait_subscribed(served, c, headers={"Last-Event-ID": "30"})
        again = read_events(resp, 20)
        cm.__exit__(None, None, None)
    assert [e["seq"] for e in first] == list(range(1, 31))
    assert [e["seq"] for e in again] == list(range(31, 51))  # none missed, none repeated


def test_reconnect_older_than_the_buffer_gets_stream_dropped(served: Served) -> None:
    served.svc.events = EventBus(ring_size=16)
    served.publish(40)
    with served.client() as c:
        cm, resp = open_and_wait_subscribed(served, c, headers={"Last-Event-ID": "4"})
        evs = read_events(resp, 17)
        cm.__exit__(None, None, None)
    assert evs[0]["type"] == "stream.dropped"
    assert evs[0]["detail"]["missed"] == 20  # 5..24 are gone
    assert [e["seq"] for e in evs[1:]] == list(range(25, 41))


def test_meshid_filter(served: Served) -> None:
    served.publish(1, mesh=MESH)
    served.publish(1, mesh="other-mesh-zzzz")
    with served.client() as c:
        cm, resp = open_and_wait_subscribed(
            served, c, params={"meshid": MESH}, headers={"Last-Event-ID": "0"}
        )
        served.publish(1, type="config.reloaded")
        evs = read_events(resp, 2)
        cm.__exit__(None, None, None)
    assert [(e["seq"], e["mesh"]) for e in evs] == [(1, MESH), (3, None)]


@pytest.mark.parametrize("bad", ["abc", "-3", "1" * 30])
def test_bad_last_event_id_is_a_clear_4xx(served: Served, bad: str) -> None:
    with served.client() as c:
        r = c.get("/v1/events", headers={"Last-Event-ID": bad})
    assert r.status_code in (400, 422), r.text
    err = r.json()["error"]
    assert "Last-Event-ID" in err["message"] or "last-event-id" in err["message"].lower()
    assert served.bus.subscribers == 0


def test_subscribers_are_capped(served: Served) -> None:
    served.svc.events = EventBus(max_subscribers=2)
    with served.client() as c:
        streams = [open_and_wait_subscribed(served, c) for _ in range(2)]
        try:
            r = c.get("/v1/events")
            assert r.status_code == 503
            assert "too many event streams" in r.json()["error"]["message"]
        finally:
            for cm, _ in streams:
                cm.__exit__(None, None, None)
        # closed streams free their slots
        wait_until(lambda: served.bus.subscribers == 0, 20, 0.05, "slots freed")
        cm, _ = open_and_wait_subscribed(served, c)
        cm.__exit__(None, None, None)


def test_bus_close_ends_the_stream(served: Served) -> None:
    with served.client() as c:
        cm, resp = open_and_wait_subscribed(served, c)
        wait_until(lambda: served.bus.subscribers == 1, 10, 0.02, "the subscription")
        done = threading.Event()
        lines: list[str] = []

        def reader() -> None:
            for line in resp.iter_lines():
                lines.append(line)
            done.set()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        served.lt.run(_close(served.bus))
        assert done.wait(5), "the stream did not end when the bus closed"
        cm.__exit__(None, None, None)


def test_server_stop_with_open_stream_is_prompt() -> None:
    """The daemon closes its bus and then its servers: stopping takes no grace period."""
    svc = FakeNodeService()
    path = str(short_tmpdir() / "smegd.sock")
    lt = LoopThread()
    try:
        server = lt.run(serve_unix(create_app(svc), path))
        transport = httpx.HTTPTransport(uds=path)
        with (
            httpx.Client(transport=transport, base_url="http://smegd", timeout=10) as c,
            c.stream("GET", "/v1/events") as resp,
        ):
            assert resp.status_code == 200
            wait_until(lambda: svc.events.subscribers == 1, 10, 0.02, "the subscription")
            t0 = time.monotonic()
            lt.run(_close(svc.events))
            lt.run(server.stop())
            assert time.monotonic() - t0 < 1.5
            rest = list(resp.iter_lines())  # ends (EOF) instead of hanging
            assert all(line == "" or line.startswith(":") for line in rest), rest
    finally:
        lt.close()


def test_client_disconnect_frees_the_subscription(served: Served) -> None:
    with served.client() as c:
        cm, _ = open_and_wait_subscribed(served, c)
        wait_until(lambda: served.bus.subscribers == 1, 10, 0.02, "the subscription")
        cm.__exit__(None, None, None)
    wait_until(lambda: served.bus.subscribers == 0, 20, 0.05, "the subscription to end")


def test_slow_consumer_cannot_stall_the_daemon(served: Served) -> None:
    """A client that never reads while thousands of (large) events are published."""
    served.svc.events = EventBus(queue_size=256)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(served.path)
    raw.sendall(b"GET /v1/events HTTP/1.1\r\nHost: smegd\r\n\r\n")
    try:
        wait_until(lambda: served.bus.subscribers == 1, 10, 0.02, "the subscription")
        detail = {"pad": "x" * 2000}
        t0 = time.monotonic()
        for _ in range(10):  # 5,000 events of 2 kB: far more than the socket buffers hold
            served.publish(500, mesh=MESH, detail=detail)
            t = time.monotonic()
            with served.client(timeout=5) as c:
                assert c.get("/v1/health").json()["ok"] is True
            assert time.monotonic() - t < 2.0, "the API answered slowly while a client stalled"
        assert time.monotonic() - t0 < 30
        (sub,) = served.bus._subs
        assert len(sub) == 256  # full, and bounded whatever the client does
        assert sub.missed >= 5000 - 256 - 1000  # (socket buffers hold < 1,000 of them)
    finally:
        raw.close()
    wait_until(lambda: served.bus.subscribers == 0, 30, 0.1, "the stalled stream to end")


def test_tcp_needs_the_token() -> None:
    svc = FakeNodeService()
    lt = LoopThread()
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = lt.run(serve_tcp(create_app(svc, token=TOKEN), "127.0.0.1", port))
        try:
            base = f"http://127.0.0.1:{port}"
            r = httpx.get(f"{base}/v1/events", timeout=5)
            assert r.status_code == 401 and svc.events.subscribers == 0
            auth = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.stream("GET", f"{base}/v1/events", headers=auth, timeout=5) as resp:
                assert resp.status_code == 200
                assert next(resp.iter_lines()).startswith(":")
        finally:
            lt.run(_close(svc.events))
            lt.run(server.stop())
    finally:
        lt.close()


def test_openapi_documents_the_event_stream(served: Served) -> None:
    with served.client() as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/v1/events"]["get"]
    assert "text/event-stream" in op["responses"]["200"]["content"]
    assert "Last-Event-ID" in op["description"] and "stream.dropped" in op["description"]
    names = {p["name"] for p in op["parameters"]}
    assert {"meshid", "Last-Event-ID"} <= names


def test_a_client_gone_before_the_stream_starts_frees_its_slot() -> None:
    """The subscription is released even if the response body never starts."""
    import asyncio

    svc = FakeNodeService()
    app = create_app(svc)

    async def go() -> int:
        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await asyncio.sleep(0.01)  # the disconnect wins the race

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/v1/events",
            "raw_path": b"/v1/events",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"smegd")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        for _ in range(5):
            await app(scope, receive, send)
        return svc.events.subscribers

    assert asyncio.run(go()) == 0
