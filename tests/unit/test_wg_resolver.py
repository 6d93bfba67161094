"""A member's endpoint name that does not resolve, or resolves slowly, holds up nobody.

Found by a review of the direct paths: a member may publish a DNS name as its
endpoint, and the WireGuard backends resolved it while building each request,
raising on failure. One peer whose name did not resolve made every apply of
the mesh fail (the reconciler retried from a full read and failed again), so
no member was added or removed there any more; a slow nameserver held the one
WireGuard worker thread of every mesh.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smegmesh.core.desired import desired_config
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.wgconfig import PeerConfig
from smegmesh.core.wgdiff import AddPeer, UpdatePeer, WgOp
from smegmesh.daemon.config import parse_config
from smegmesh.daemon.node import Daemon
from smegmesh.net.host import MemoryHost
from smegmesh.testbed.founded import ident
from smegmesh.wg import factory
from smegmesh.wg.kernel import KernelBackend, build_set_requests
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.resolver import EndpointResolver, resolve_ops
from smegmesh.wg.uapi import format_set

MESH = "amber-falcon-river-k7q2"
NOW = 1_700_000_000_000


def _nxdomain(*_a: object, **_k: object) -> Any:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _answer(ip: str) -> Any:
    def lookup(*_a: object, **_k: object) -> Any:
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", (ip, 51820))]

    return lookup


class UapiBackend(MemoryBackend):
    """The memory backend, each apply resolved and formatted as the userspace backend does."""

    def __init__(self, resolve: EndpointResolver) -> None:
        super().__init__()
        self.resolve = resolve
        self.sent: list[str] = []

    def apply(self, name: str, ops: Any) -> list[WgOp]:
        send, applied = resolve_ops(ops, self.resolve)
        self.sent += format_set(send)
        return super().apply(name, applied)


def _peer(i: int, endpoint: str) -> NodeRecord:
    return NodeRecord.create(
        ident(i), MESH, version=1, now_ms=NOW, role=Role.PEER, wg_endpoint=endpoint
    )


def test_a_peer_whose_name_does_not_resolve_does_not_stop_the_others() -> None:
    me, bad = _peer(1, "198.51.100.1:51820"), _peer(2, "gone.example:51820")
    good = _peer(3, "198.51.100.3:51820")
    iface, host = desired_config(
        mesh_id=MESH,
        self_key=me.wg_key,
        private_key=ident(1).wg_private_key,
        role=Role.PEER,
        listen_port=51820,
        records=[me, bad, good],
        ifname="smeg0",
    )
    backend = UapiBackend(EndpointResolver(lookup=_nxdomain))
    Reconciler(backend, MemoryHost()).apply(iface, host)
    assert {bad.wg_key, good.wg_key} <= set(backend.devices["smeg0"].peers)
    text = "".join(backend.sent)
    assert "endpoint=198.51.100.3:51820" in text and "gone.example" not in text


def test_both_backends_leave_out_an_endpoint_that_does_not_resolve() -> None:
    resolve = EndpointResolver(lookup=_nxdomain)
    ops: list[WgOp] = [
        AddPeer(PeerConfig(bytes(32), "gone.example:51820", frozenset(), 0)),
        UpdatePeer(b"\x01" * 32, "gone.example:51820", None, None),
        AddPeer(PeerConfig(b"\x02" * 32, "[2001:db8::2]:51820", frozenset(), 0)),
    ]
    text = "".join(format_set(ops, resolve))
    assert text.count("endpoint=") == 1 and "endpoint=[2001:db8::2]:51820" in text
    reqs = build_set_requests(ops, resolve)
    assert [r.peer and r.peer.get("endpoint_addr") for r in reqs] == [None, None, "2001:db8::2"]
    assert resolve.lookups == 1  # the failure is remembered (retried after retry_s)


def test_a_name_is_looked_up_once_per_ttl_and_literals_never() -> None:
    now = [0.0]
    resolve = EndpointResolver(lookup=_answer("192.0.2.7"), clock=lambda: now[0], ttl_s=60)
    assert resolve("[2001:db8::1]:51820") == "[2001:db8::1]:51820"
    assert resolve.lookups == 0
    for _ in range(5):
        assert resolve("home.example:51820") == "192.0.2.7:51820"
    assert resolve.lookups == 1
    now[0] = 61.0
    assert resolve("home.example:51820") == "192.0.2.7:51820"
    assert resolve.lookups == 2


def test_a_slow_nameserver_costs_one_short_wait_then_none() -> None:
    release = threading.Event()

    def slow(*_a: object, **_k: object) -> Any:
        release.wait(10)
        return _answer("192.0.2.9")()

    resolve = EndpointResolver(lookup=slow, timeout_s=0.2)
    t0 = time.monotonic()
    assert resolve("slow.example:51820") is None
    assert resolve("slow.example:51820") is None  # the lookup is still out: no second wait
    assert time.monotonic() - t0 < 2.0
    assert resolve.lookups == 1
    release.set()
    deadline = time.monotonic() + 5
    while resolve("slow.example:51820") is None:  # the late answer is kept
        assert time.monotonic() < deadline, "the late answer was not kept"
        time.sleep(0.01)
    assert resolve("slow.example:51820") == "192.0.2.9:51820"
    resolve.close()


def test_names_held_are_bounded() -> None:
    resolve = EndpointResolver(lookup=_nxdomain, max_names=8)
    for i in range(50):
        assert resolve(f"n{i}.example:51820") is None
    assert len(resolve._known) <= 8


def test_a_name_looked_up_again_is_evicted_last() -> None:
    """A name in use is looked up again each ``ttl_s``: that moves it to the end
    of the eviction order, so names a member publishes once go before it."""
    now = [0.0]
    resolve = EndpointResolver(lookup=_answer("192.0.2.7"), clock=lambda: now[0], max_names=4)
    names = [f"n{i}.example:51820" for i in range(4)]
    for name in names:
        assert resolve(name) == "192.0.2.7:51820"
    now[0] = resolve.ttl_s + 1
    assert resolve(names[0]) == "192.0.2.7:51820"  # looked up again
    assert resolve("new.example:51820") == "192.0.2.7:51820"  # one name must go
    assert names[0] in resolve._known and names[1] not in resolve._known


@pytest.mark.parametrize("bad", ["gone.example:x", "gone.example"])
def test_a_malformed_port_is_none_not_an_exception(bad: str) -> None:
    assert EndpointResolver(lookup=_answer("192.0.2.1"))(bad) is None


def test_failed_lookups_go_to_the_report_given() -> None:
    """A failure and a timeout each reach ``report`` (endpoint, why), not a line of their own."""
    seen: list[tuple[str, str]] = []
    release = threading.Event()

    def lookup(host: str, *_a: object, **_k: object) -> Any:
        if host == "slow.example":
            release.wait(10)
        return _nxdomain()

    resolve = EndpointResolver(
        lookup=lookup, timeout_s=0.05, report=lambda e, why: seen.append((e, why))
    )
    assert resolve("gone.example:51820") is None
    assert resolve("slow.example:51820") is None
    release.set()
    resolve.close()
    assert [e for e, _ in seen] == ["gone.example:51820", "slow.example:51820"]
    assert "not known" in seen[0][1] and "no answer" in seen[1][1]


@contextlib.contextmanager
def _kernel_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Daemon, EndpointResolver]]:
    """A daemon on the kernel backend (probed as present) whose resolver finds no name."""
    monkeypatch.setattr(factory, "kernel_wireguard_available", lambda netns=None: True)
    monkeypatch.setattr(KernelBackend, "_probe", lambda self: None)
    d = Daemon(parse_config({"stateDir": str(tmp_path), "wgBackend": "kernel"}))
    try:
        d._start_wireguard()
        resolve = d.backend._resolve
        resolve._lookup = _nxdomain
        try:
            yield d, resolve
        finally:
            resolve.close()
    finally:
        d._wg_pool.shutdown(wait=False)


def test_a_member_publishing_a_new_name_per_version_gets_one_warning_not_one_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a review of logs under a hostile member (docs/SECURITY.md): each
    failed lookup logged a WARNING, and a member can publish a new name that does
    not resolve with each version of its record, one WARNING per reconcile pass.
    smegd rate-limits them (daemon/ratelog.py): the first at once, then a summary."""
    with _kernel_daemon(tmp_path, monkeypatch) as (_, resolve), caplog.at_level(logging.WARNING):
        for version in range(50):
            assert resolve(f"v{version}.gone.example:51820") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings  # was 50
    assert "v0.gone.example:51820" in warnings[0]


def test_the_summary_of_names_that_do_not_resolve_comes_with_the_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The summary was written only by the next failed lookup after the minute:
    a member that stopped publishing bad names left its last count unlogged. The
    health check, every 5 s in the WireGuard worker that notes them, writes it."""
    with _kernel_daemon(tmp_path, monkeypatch) as (d, resolve), caplog.at_level(logging.WARNING):
        for version in range(5):
            assert resolve(f"v{version}.gone.example:51820") is None
        later = time.monotonic() + 61
        d._unresolved._clock = lambda: later
        assert d._wg_pool.submit(d._wg_health_check).result() == ([], {})
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[1].startswith("unresolved 4 endpoint names in member records"), warnings
