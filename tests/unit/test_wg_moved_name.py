"""A peer endpoint name whose address changes reaches WireGuard within a TTL.

Left by earlier sessions (docs/SECURITY.md, endpoint names): the reconciler's
cache holds a named endpoint as given, so once it was set, a new address of
the name changed nothing in the diff, and WireGuard kept the old address until
the full read (``verify_interval``, 300 s in smegd). A member on a dynamic
address was unreachable for that long from a client behind NAT (WireGuard
follows a roaming peer only once the peer sends it something).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from typing import Any

from smegmesh.core.wgdiff import RemovePeer, UpdatePeer, WgOp
from smegmesh.net.host import MemoryHost
from smegmesh.wg.memory import MemoryBackend
from smegmesh.wg.reconcile import Reconciler
from smegmesh.wg.resolver import EndpointResolver, SentNames, resolve_ops
from test_wg_late_endpoint import NAME, P, settle, wanted


class _Wg(MemoryBackend):
    """Resolves and keeps what it sent as the kernel and userspace backends do:
    WireGuard holds the IP literals."""

    def __init__(self, resolve: EndpointResolver) -> None:
        super().__init__()
        self.resolve = resolve
        self.names = SentNames(resolve)
        self.applies = 0

    def apply(self, name: str, ops: Sequence[WgOp]) -> list[WgOp]:
        self.applies += 1
        send, applied = resolve_ops(ops, self.resolve)
        super().apply(name, send)
        self.names.note(name, send, applied)
        return applied

    def moved_endpoints(self, name: str, wanted: Mapping[bytes, str]) -> list[bytes]:
        return self.names.moved(name, wanted)


def _dns(ip: list[str | None]) -> Any:
    def lookup(*_a: object, **_k: object) -> list[tuple[Any, ...]]:
        if ip[0] is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 0, "", (ip[0], 51820))]

    return lookup


def _checks(rec: Reconciler, resolve: EndpointResolver, now: list[float], seconds: int) -> None:
    """smegd's health check every 5 s for ``seconds`` (background lookups let finish)."""
    for _ in range(seconds // 5):
        now[0] += 5
        rec.check()
        settle(resolve)


def test_a_moved_address_is_set_within_a_ttl_without_a_full_read() -> None:
    now, ip = [0.0], ["192.0.2.1"]
    resolve = EndpointResolver(lookup=_dns(ip), clock=lambda: now[0])  # TTL 60 s
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0])  # full read every 300 s
    rec.apply(*wanted())
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.1:51820"
    reads = wg.reads
    ip[0] = "192.0.2.2"  # the member's dynamic address changed
    _checks(rec, resolve, now, 70)  # a TTL and two checks
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.2:51820"
    assert wg.reads == reads  # no full read
    # the caller starts a handshake with it, as with any endpoint set by a check
    assert rec.take_applied_again() == {"wgc0": [UpdatePeer(P, endpoint=NAME)]}
    resolve.close()


def test_a_name_that_keeps_its_address_costs_no_apply_and_a_lookup_a_ttl() -> None:
    now, ip = [0.0], ["192.0.2.1"]
    resolve = EndpointResolver(lookup=_dns(ip), clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=10_000)
    rec.apply(*wanted())
    lookups, applies = resolve.lookups, wg.applies
    _checks(rec, resolve, now, 600)  # ten minutes
    assert wg.applies == applies
    assert resolve.lookups - lookups <= 10  # one a minute, in the background
    assert rec.take_applied_again() == {}
    resolve.close()


def test_a_name_that_stops_resolving_keeps_the_address_wireguard_has() -> None:
    now, ip = [0.0], ["192.0.2.1"]
    resolve = EndpointResolver(lookup=_dns(ip), clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=10_000)
    rec.apply(*wanted())
    ip[0] = None  # its nameserver is gone: the last address may still work
    _checks(rec, resolve, now, 120)
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.1:51820"
    ip[0] = "192.0.2.3"
    _checks(rec, resolve, now, 70)
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.3:51820"
    resolve.close()


def test_sent_names_forget_removed_peers_and_literals() -> None:
    resolve = EndpointResolver(lookup=_dns(["192.0.2.1"]))
    names = SentNames(resolve)

    send, applied = resolve_ops([UpdatePeer(P, endpoint=NAME)], resolve)
    names.note("wgc0", send, applied)
    assert names._sent == {"wgc0": {P: (NAME, "192.0.2.1:51820")}}
    names.note("wgc0", *resolve_ops([UpdatePeer(P, endpoint="192.0.2.9:1")], resolve))
    assert names._sent == {}
    names.note("wgc0", send, applied)
    names.note("wgc0", [RemovePeer(P)], [RemovePeer(P)])
    assert names._sent == {}
    resolve.close()


def test_a_failed_lookup_in_the_background_of_a_peek_is_reported() -> None:
    """``peek`` starts a lookup it does not wait for: its failure is told by the
    next call that reads it (a waited lookup's would be told by its waiter,
    which here there is none of)."""
    now, ip = [0.0], ["192.0.2.1"]
    told: list[str] = []
    resolve = EndpointResolver(
        lookup=_dns(ip), clock=lambda: now[0], report=lambda ep, why: told.append(why)
    )
    assert resolve(NAME) == "192.0.2.1:51820"
    ip[0] = None
    now[0] = 61.0
    assert resolve.peek(NAME) == "192.0.2.1:51820"  # held; looked up again behind
    settle(resolve)
    assert resolve.peek(NAME) is None and len(told) == 1 and "does not resolve" in told[0]


def test_a_name_the_member_no_longer_publishes_is_not_applied_again_each_check(
    caplog: Any,
) -> None:
    """Found by review: a member that stops publishing its endpoint name (its
    record's endpoint goes to None: learn it from handshakes) left its entry in
    ``SentNames``; once that name moved, every health check (5 s) dropped the
    endpoint from the cache, applied again with nothing to send and logged at
    INFO that it gave WireGuard a new address, forever."""
    import logging
    from dataclasses import replace

    now, ip = [0.0], ["192.0.2.1"]
    resolve = EndpointResolver(lookup=_dns(ip), clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=10_000)
    want, host = wanted()
    rec.apply(want, host)
    no_name = replace(want, peers={P: replace(want.peers[P], endpoint=None)})
    rec.apply(no_name, host)  # the member's record has no endpoint now
    ip[0] = "192.0.2.2"
    with caplog.at_level(logging.INFO, logger="smegmesh.wg.reconcile"):
        _checks(rec, resolve, now, 120)
    assert [r for r in caplog.records if "new address" in r.getMessage()] == []
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.1:51820"  # WireGuard's, untouched
    resolve.close()


def test_a_name_that_never_resolves_does_not_hide_another_ones_move() -> None:
    """Found by review: the check looked for moved names only when no endpoint
    was left out, so one member publishing a name that never resolves (its
    peer left out at each check) kept every other member's new address from
    WireGuard until the full read, as before the fix."""
    from dataclasses import replace

    from smegmesh.core.wgconfig import PeerConfig

    q, bad = b"q" * 32, "never.invalid:51820"
    now, ip = [0.0], ["192.0.2.1"]

    def lookup(host: str, *a: object, **k: object) -> list[tuple[Any, ...]]:
        if host == "never.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _dns(ip)(host, *a, **k)

    resolve = EndpointResolver(lookup=lookup, clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=10_000)
    want, host = wanted()
    other = PeerConfig(q, bad, frozenset({"fd00::2/128"}), keepalive=25)
    want = replace(want, peers={**want.peers, q: other})
    rec.apply(want, host)
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.1:51820"
    ip[0] = "192.0.2.2"
    _checks(rec, resolve, now, 70)
    assert wg.devices["wgc0"].peers[P].endpoint == "192.0.2.2:51820"
    assert wg.devices["wgc0"].peers[q].endpoint is None
    resolve.close()


def _lookups_after_the_member_changes_its_endpoint(
    endpoint: str | None, *, full_read: bool = False
) -> tuple[Any, int]:
    """A peer whose endpoint was the name ``NAME``, then ``endpoint`` (after a full
    read of WireGuard, with ``full_read``): what ``SentNames`` holds and the lookups
    ten minutes of health checks make."""
    from dataclasses import replace

    now, ip = [0.0], ["192.0.2.1"]
    resolve = EndpointResolver(lookup=_dns(ip), clock=lambda: now[0])
    wg = _Wg(resolve)
    rec = Reconciler(wg, MemoryHost(), clock=lambda: now[0], verify_interval=10_000)
    want, host = wanted()
    rec.apply(want, host)
    assert wg.names._sent == {"wgc0": {P: (NAME, "192.0.2.1:51820")}}
    if full_read:  # the cache holds the address WireGuard has, not the name
        rec.invalidate("wgc0")
    rec.apply(replace(want, peers={P: replace(want.peers[P], endpoint=endpoint)}), host)
    lookups = resolve.lookups
    _checks(rec, resolve, now, 600)
    resolve.close()
    return wg.names._sent, resolve.lookups - lookups


def test_a_name_the_member_replaced_by_an_address_is_not_looked_up_again() -> None:
    """Found by review: a member that stops publishing a name as its endpoint but
    stays a peer kept its entry in ``SentNames``, and the health check looked the
    name up once a minute for nothing."""
    for endpoint in ("192.0.2.1:51820", "192.0.2.7:51820", "[2001:db8::7]:51820"):
        assert _lookups_after_the_member_changes_its_endpoint(endpoint) == ({}, 0), endpoint


def test_a_name_replaced_by_its_own_address_after_a_full_read_is_not_looked_up_again() -> None:
    """The diff sends nothing then (WireGuard has that address already), so only
    what the peer's endpoint is wanted as now tells ``SentNames`` the name is gone."""
    assert _lookups_after_the_member_changes_its_endpoint("192.0.2.1:51820", full_read=True) == (
        {},
        0,
    )


def test_a_name_the_member_no_longer_publishes_is_not_looked_up_again() -> None:
    """As above, for a record whose endpoint goes to None (learn it from handshakes)."""
    assert _lookups_after_the_member_changes_its_endpoint(None) == ({}, 0)
