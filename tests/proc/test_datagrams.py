"""The datagram path between real daemons on loopback (issue 14, daemon/rpc_dgram.py).

* two daemons with datagrams (the default): once formed, probes, acks and
  in-sync digest pulls go by datagram, none over the gRPC stream; garbage and
  forged UDP to the gRPC port is dropped and counted, and the daemon keeps
  answering with flat memory;
* a daemon with ``datagrams: false`` in a mesh with one that has them: the
  calls fall back to the stream, the mesh converges and liveness holds.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smegmesh.core.identity import key_from_text
from smegmesh.daemon import dgram_wire as dw
from smegmesh.testbed.loopback import Cluster, Smegd, create_mesh, free_port, wait_until

TIMINGS = {"heartbeatInterval": 1, "syncInterval": 1, "pullInterval": 2, "timeout": 3}
SMALL = ("Ping", "SyncStart")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(d: Smegd) -> Samples:
    port = d.extra["metricsListen"].rsplit(":", 1)[1]
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    r.raise_for_status()
    out: Samples = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def calls(d: Smegd, transport: str, direction: str = "out") -> float:
    s = scrape(d)
    return sum(
        total(
            s, "smegd_rpc_transport_calls_total", direction=direction, type=t, transport=transport
        )
        for t in SMALL
    )


def _rss_kb(d: Smegd) -> int:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


@pytest.fixture
def cl() -> Any:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _add(cl: Cluster, **extra: Any) -> Smegd:
    metrics = {"metricsListen": f"127.0.0.1:{free_port('127.0.0.1')}"}
    return cl.add(1, wait=False, api_listen=True, extra={**TIMINGS, **metrics, **extra})[0]


def _all_live(daemons: list[Smegd], mesh: str) -> bool:
    for d in daemons:
        nodes = d.mesh(mesh)["nodes"]
        if len(nodes) != len(daemons) or any(n.get("status") != "live" for n in nodes):
            return False
    return True


def _garbage(member_key: bytes, our_key: bytes, i: int) -> bytes:
    """Random junk, or a well-formed header from a member with a forged ciphertext."""
    if i % 2:
        return os.urandom(40 + i * 7 % 1300)
    head = dw.HEADER.pack(
        dw.MAGIC, dw.REQUEST, dw.key_id(member_key), dw.key_id(our_key), os.urandom(dw.NONCE_LEN)
    )
    return head + os.urandom(60)


def _flood(d: Smegd, member_key: bytes, our_key: bytes, batches: int = 4, size: int = 40) -> None:
    """Garbage in small batches, each counted before the next (a burst larger than
    the socket's receive buffer would be dropped by the kernel, unseen by the daemon)."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for b in range(batches):
            base = total(scrape(d), "smegd_datagrams_refused_total")
            for i in range(size):
                s.sendto(_garbage(member_key, our_key, b * size + i), ("::1", d.grpc_port))
            wait_until(
                lambda base=base: total(scrape(d), "smegd_datagrams_refused_total") >= base + size,
                30,
                0.1,
                "the garbage counted as refused",
            )
    finally:
        s.close()


def test_steady_state_small_calls_go_by_datagram_and_garbage_is_dropped(cl: Cluster) -> None:
    a, b = _add(cl), _add(cl)
    cl.wait_ready()
    mesh = create_mesh(a, [b])
    wait_until(lambda: _all_live([a, b], mesh), 60, 0.2, "both live")
    # Formed (the joiner's first calls went to a member that did not know it yet):
    # from now on, probes and digest pulls go by datagram, none on the stream.
    wait_until(
        lambda: all(calls(d, "datagram") >= 3 for d in (a, b)), 60, 0.5, "datagrams answered"
    )
    before = {d.name: (calls(d, "datagram"), calls(d, "stream")) for d in (a, b)}
    wait_until(
        lambda: all(calls(d, "datagram") >= before[d.name][0] + 10 for d in (a, b)),
        60,
        0.5,
        "10 small calls by datagram each way",
    )  # (a daemon that learnt to call the other over the stream only fails here)
    for d in (a, b):
        # ~0 on the stream (a pull that finds a difference larger than a datagram may go there)
        assert calls(d, "stream") - before[d.name][1] <= 2, "small calls stayed on the stream"
        assert calls(d, "datagram", "in") > 0
        s = scrape(d)
        assert total(s, "smegd_wire_datagram_bytes_total", direction="out", type="Ping") > 0
    # Garbage to a's gRPC port number (UDP): dropped, counted, no effect.
    rss0 = _rss_kb(a)
    a_key = key_from_text(a.self_key(mesh))
    b_key = key_from_text(b.self_key(mesh))
    _flood(a, b_key, a_key)
    after = calls(a, "datagram")
    wait_until(lambda: calls(a, "datagram") >= after + 5, 30, 0.2, "datagrams still answered")
    wait_until(lambda: _all_live([a, b], mesh), 30, 0.2, "both live after the garbage")
    assert a.api("GET", "/v1/health") is not None
    assert _rss_kb(a) - rss0 < 8 * 1024, "memory grew with the garbage"
    assert "Traceback" not in a.log()


def test_a_daemon_without_datagrams_is_reached_over_the_stream(cl: Cluster) -> None:
    a, b = _add(cl), _add(cl, datagrams=False)
    cl.wait_ready()
    mesh = create_mesh(a, [b])
    wait_until(lambda: _all_live([a, b], mesh), 60, 0.2, "both live")
    wait_until(lambda: "does not answer datagrams" in a.log(), 60, 0.5, "a to learn")
    # Calls in flight when it learnt (timeout 3 s) end; later ones go on the stream only.
    before = calls(a, "stream")
    wait_until(lambda: calls(a, "stream") >= before + 10, 60, 0.5, "a's calls on the stream")
    unanswered = total(scrape(a), "smegd_datagram_calls_total", result="unanswered")
    before = calls(a, "stream")
    wait_until(lambda: calls(a, "stream") >= before + 10, 60, 0.5, "a's calls on the stream")
    # b never uses datagrams; a learnt to call b over the stream only, at once.
    assert calls(b, "datagram") == 0
    assert total(scrape(b), "smegd_wire_datagram_bytes_total") == 0
    assert total(scrape(a), "smegd_datagram_calls_total", result="unanswered") == unanswered
    wait_until(lambda: _all_live([a, b], mesh), 30, 0.2, "both live")
