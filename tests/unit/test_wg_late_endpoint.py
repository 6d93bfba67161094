"""An endpoint name that resolves late is set soon, not at the next full read.

Found by a review: the backends leave a peer's endpoint out while its name does
not resolve (wg/resolver.py), but the reconciler recorded the name as applied,
so no later apply set it: only the full re-read every ``verify_interval``
(300 s) did. A client behind NAT whose assigned peer it was had no data path
for up to 5 minutes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from smegmesh.core.wgconfig import HostConfig, InterfaceConfig, PeerConfig
from smegmesh.core.wgdiff import AddPeer, UpdatePeer, WgOp
from smegmesh.net.host import MemoryHost
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.resolver import EndpointResolver, resolve_ops
from test_wg_resolver import UapiBackend

P = b"p" * 32
NAME = "gw-3.example.net:51820"


class _SlowDnsBackend(MemoryBackend):
    """Leaves out name endpoints while "DNS" is slow, as the real backends do."""

    dns_ok = False

    def _resolve(self, endpoint: str) -> str | None:
        return endpoint if self.dns_ok or not endpoint[0].isalpha() else None

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        _send, applied = resolve_ops(ops, self._resolve)
        return super().apply(name, applied)


def settle(resolve: EndpointResolver) -> None:
    """Wait (5 s at most) until the lookups ``resolve`` started in the background are done."""
    deadline = time.monotonic() + 5
    while resolve._pending:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def wanted() -> tuple[InterfaceConfig, HostConfig]:
    """A client's interface with one peer, whose endpoint is the name ``NAME``."""
    peer = PeerConfig(P, NAME, frozenset({"fd00::/64"}), keepalive=25)
    return (
        InterfaceConfig("wgc0", b"\x22" * 32, 51820, {P: peer}),
        HostConfig("wgc0", addresses=frozenset({"fd00::9/64"})),
    )


def test_an_endpoint_name_that_resolved_late_is_set_by_the_next_health_check() -> None:
    wg, host = _SlowDnsBackend(), MemoryHost()
    rec = Reconciler(wg, host)
    want, host_cfg = wanted()
    rec.apply(want, host_cfg)
    assert wg.devices["wgc0"].peers[P].endpoint is None
    wg.dns_ok = True
    reads = wg.reads
    assert rec.check() == []  # nothing was lost: not reported as created
    assert wg.devices["wgc0"].peers[P].endpoint == NAME
    assert wg.reads == reads  # from the cache, no full read


def test_an_apply_pass_sends_a_left_out_endpoint_again_and_reports_no_change() -> None:
    wg = _SlowDnsBackend()
    rec = Reconciler(wg, MemoryHost())
    want, host_cfg = wanted()
    first = rec.apply(want, host_cfg)
    assert first.left_out and first.wg_ops[-1] == AddPeer(replace(want.peers[P], endpoint=None))
    again = rec.apply(want, host_cfg)  # still no answer: sent again, nothing changed
    assert again.left_out and again.wg_ops == [] and not again.changed
    wg.dns_ok = True
    done = rec.apply(want, host_cfg)
    assert not done.left_out and wg.devices["wgc0"].peers[P].endpoint == NAME
    assert rec.apply(want, host_cfg).wg_ops == [] and not rec.check()
    assert wg.applied[-1][1] == (UpdatePeer(P, NAME, None, None),)


def _records(ip: str) -> list[tuple[Any, ...]]:
    """What ``getaddrinfo`` answers for ``ip``."""
    return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", (ip, 51820))]


def test_the_answer_of_a_slow_nameserver_is_set_by_the_next_check() -> None:
    release = threading.Event()

    def slow(*_a: object, **_k: object) -> list[tuple[Any, ...]]:
        release.wait(10)
        return _records("192.0.2.9")

    resolve = EndpointResolver(lookup=slow, timeout_s=0.05)
    wg = UapiBackend(resolve)
    rec = Reconciler(wg, MemoryHost())
    rec.apply(*wanted())
    assert wg.devices["wgc0"].peers[P].endpoint is None
    assert rec.check() == [] and wg.devices["wgc0"].peers[P].endpoint is None  # still out
    release.set()
    settle(resolve)
    reads = wg.reads
    assert rec.check() == []
    assert wg.devices["wgc0"].peers[P].endpoint == NAME
    assert "endpoint=192.0.2.9:51820" in "".join(wg.sent) and wg.reads == reads
    assert resolve.lookups == 1
    resolve.close()


def test_a_name_that_never_resolves_costs_no_read_no_wait_and_few_lookups() -> None:
    """Checked every 5 s for an hour: no full read (within verify_interval), no
    request, a lookup (in the background, never waited for after the first) per
    ``retry_s`` and a report per lookup, for the RateLog to summarise."""
    now = [0.0]
    seen: list[str] = []
    hang = threading.Event()
    calls = [0]

    def lookup(*_a: object, **_k: object) -> list[tuple[Any, ...]]:
        calls[0] += 1
        if calls[0] == 5:  # a nameserver that stops answering: not waited for
            hang.wait(10)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    resolve = EndpointResolver(
        lookup=lookup, clock=lambda: now[0], report=lambda e, why: seen.append(why)
    )
    wg = UapiBackend(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=1e9)
    rec.apply(*wanted())
    sent, reads = len(wg.sent), wg.reads
    t0 = time.monotonic()
    for i in range(720):
        now[0] += 5
        if i == 100:
            hang.set()
        assert rec.check() == []
        while resolve._pending and (calls[0] != 5 or hang.is_set()):
            time.sleep(0.001)  # let a background lookup finish
    assert time.monotonic() - t0 < 5  # (a wait of 1 s per lookup would be 2 min)
    assert wg.devices["wgc0"].peers[P].endpoint is None
    assert wg.reads == reads and len(wg.sent) == sent  # nothing to send: no request
    assert 90 <= resolve.lookups <= 3600 / resolve.retry_s + 1
    assert resolve.lookups - 2 <= len(seen) <= resolve.lookups  # a report per failed lookup
    resolve.close()


def test_a_failure_looked_up_in_the_background_is_reported_once_by_the_next_call() -> None:
    now = [0.0]
    seen: list[tuple[str, str]] = []
    answers = iter([_records("192.0.2.7")])

    def lookup(*_a: object, **_k: object) -> list[tuple[Any, ...]]:
        try:
            return next(answers)
        except StopIteration:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None

    resolve = EndpointResolver(
        lookup=lookup, clock=lambda: now[0], report=lambda e, why: seen.append((e, why))
    )
    assert resolve(NAME) == "192.0.2.7:51820"
    now[0] = 61.0
    assert resolve(NAME) is None  # an old answer is waited for again: it failed
    assert [e for e, _ in seen] == [NAME] and "not known" in seen[0][1]
    now[0] = 100.0  # past retry_s: again in the background, None meanwhile
    assert resolve(NAME) is None
    settle(resolve)
    assert resolve(NAME) is None and resolve(NAME) is None
    assert [e for e, _ in seen] == [NAME, NAME] and "not known" in seen[1][1]
    resolve.close()


def test_the_ops_the_health_check_applied_again_are_handed_on_once() -> None:
    """What follows an apply (a handshake nudge) follows the health check's too."""
    wg = _SlowDnsBackend()
    rec = Reconciler(wg, MemoryHost())
    rec.apply(*wanted())
    assert rec.check() == [] and rec.take_applied_again() == {}  # still no answer
    wg.dns_ok = True
    rec.check()
    assert rec.take_applied_again() == {"wgc0": [UpdatePeer(P, NAME, None, None)]}
    rec.check()
    assert rec.take_applied_again() == {}
