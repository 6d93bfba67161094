"""NAT traversal (issue 17, docs/NAT.md): records, messages and the pure decision logic."""

from __future__ import annotations

import contextlib
import itertools
import random
from typing import Any

import pytest

from envcheck import missing
from nat_nodes import IDS, MESH, NOW, client, peer
from smegmesh.core.desired import desired_config
from smegmesh.core.direct import (
    ATTEMPT_MS,
    BACKOFF_BASE_MS,
    BACKOFF_MAX_MS,
    DIRECT_KEEPALIVE_S,
    HANDSHAKE_MAX_AGE_MS,
    PROBE_STALE_MS,
    STALE_MS,
    DirectPeer,
    DirectTable,
    backoff_period_ms,
    choose_direct,
    endpoint_for,
    pair_score,
    retry_slot_ms,
)
from smegmesh.core.direct_plan import clash_move_delay_ms
from smegmesh.core.gossip import GossipParams
from smegmesh.core.messages import Observed, WhereAmI
from smegmesh.core.record import NodeRecord, RecordError, Role, record_from_obj, validate_record
from smegmesh.core.wire import WireError, decode, encode

#: when a clash moves a client, with the default pull interval
DELAY = clash_move_delay_ms(GossipParams().pull_interval_ms)


# --------------------------------------------------------------------------- record field
def test_nat_fields_are_signed_and_roundtrip() -> None:
    rec = client(0, "203.0.113.7:40001", ("192.168.1.10:51820",))
    back = record_from_obj(rec.to_obj())
    assert back == rec and back.nat_endpoint == "203.0.113.7:40001"
    validate_record(back, MESH)
    obj = rec.to_obj()
    obj[21][0][1][0] = "203.0.113.8:40001"  # tampered endpoint (extension [tag, [nat, local]])
    with pytest.raises(RecordError, match="signature"):
        validate_record(record_from_obj(obj), MESH)


def test_record_without_nat_fields_keeps_its_old_wire_form() -> None:
    rec = client(0)
    assert len(rec.to_obj()) == 21  # same bytes and signature as before issue 17
    assert record_from_obj(rec.to_obj()) == rec


def test_nat_fields_are_bounded_and_checked() -> None:
    with pytest.raises(RecordError, match="local_endpoints"):
        client(0, None, tuple(f"10.0.0.{i}:1" for i in range(5)))
    with pytest.raises(RecordError, match="nat_endpoint"):
        client(0, "not an endpoint")
    obj = client(0, "203.0.113.7:40001").to_obj()
    obj[21] = [[2, ["203.0.113.7:40001"]]]
    with pytest.raises(RecordError, match="nat"):
        record_from_obj(obj)


def test_evolve_keeps_and_changes_nat_fields() -> None:
    rec = client(0, "203.0.113.7:40001")
    nxt = rec.evolve(IDS[0], NOW + 1, alias="x")
    assert nxt.nat_endpoint == "203.0.113.7:40001"
    assert rec.evolve(IDS[0], NOW + 2, nat_endpoint=None).nat_endpoint is None


def test_whereami_observed_messages() -> None:
    assert decode(encode(WhereAmI(MESH))) == WhereAmI(MESH)
    for ep in ("203.0.113.7:40001", "[2001:db8::7]:40001", None):
        assert decode(encode(Observed(MESH, ep))) == Observed(MESH, ep)
    with pytest.raises(WireError):
        decode(encode(Observed(MESH, "x" * 300)))


# --------------------------------------------------------------------------- choice
def test_choice_is_mutual_symmetric_and_bounded() -> None:
    recs = [client(i, f"203.0.113.{i}:4000") for i in range(30)] + [peer(35)]
    limit = 4
    chosen = {r.wg_key: choose_direct(r.wg_key, recs, limit) for r in recs}
    for k, mine in chosen.items():
        assert len(mine) <= limit
        for o in mine:
            assert k in chosen[o], "both ends of a pair decide the same"
    assert sum(map(len, chosen.values())) > 0
    assert chosen[IDS[35].wg_public_key] == set()  # peers take no part
    assert choose_direct(IDS[0].wg_public_key, recs, 0) == set()  # directPeers 0: off


def test_choice_needs_published_endpoints() -> None:
    recs = [client(0, "203.0.113.1:4000"), client(1), client(2, None, ("10.0.0.2:51820",))]
    assert choose_direct(IDS[0].wg_public_key, recs, 8) == {IDS[2].wg_public_key}
    assert choose_direct(IDS[1].wg_public_key, recs, 8) == set()  # it publishes nothing


def test_pair_score_is_symmetric() -> None:
    a, b = IDS[0].wg_public_key, IDS[1].wg_public_key
    assert pair_score(a, b) == pair_score(b, a)


def test_endpoint_prefers_local_behind_the_same_nat() -> None:
    a = client(0, "203.0.113.7:40001", ("192.168.1.10:51820",))
    b = client(1, "203.0.113.7:40002", ("192.168.1.11:51820",))
    c = client(2, "198.51.100.9:1234", ("192.168.1.12:51820",))
    assert endpoint_for(a, b) == "192.168.1.11:51820"
    assert endpoint_for(a, c) == "198.51.100.9:1234"
    assert endpoint_for(c, a) == "203.0.113.7:40001"
    # a name is never a direct endpoint (each attempt would wait on the member's DNS)
    named = client(3, "attacker-ns.example:51820", ("lan.example:51820",))
    assert endpoint_for(a, named) is None
    assert endpoint_for(a, client(4, None, ("lan.example:51820",))) is None


# --------------------------------------------------------------------------- sessions
ME, K = IDS[0].wg_public_key, IDS[1].wg_public_key
EP = "203.0.113.9:4000"


def test_session_routes_only_once_up_and_falls_back_when_stale() -> None:
    t = DirectTable(me=ME)
    now = NOW
    assert t.update(now, {K: EP}, {}) == {K: DirectPeer(EP, routed=False)}  # trying, relayed
    now += 1000
    assert t.update(now, {K: EP}, {K: (None, 0)})[K].routed is False  # no handshake yet
    now += 1000
    assert t.update(now, {K: EP}, {K: (now / 1000, 148)})[K].routed is True  # up
    rx = 148
    for _ in range(10):  # keepalives keep arriving: stays up
        now += 1000
        rx += 32
        assert t.update(now, {K: EP}, {K: (NOW / 1000 + 2, rx)})[K].routed is True
    # the mapping breaks: nothing arrives; stale within STALE_MS (+ one tick)
    down_at = None
    for step in range(10):
        now += 1000
        plan = t.update(now, {K: EP}, {K: (NOW / 1000 + 2, rx)})
        if K not in plan:
            down_at = step + 1
            break
        assert plan[K].routed
    assert down_at is not None and down_at * 1000 <= STALE_MS + 1000
    assert t.state(K) == "backoff"
    # retried after the backoff, not before
    retry = t.backoff[K].retry_ms
    assert retry - now >= BACKOFF_BASE_MS // 2
    assert t.update(retry - 1, {K: EP}, {}) == {}
    assert t.update(retry, {K: EP}, {}) == {K: DirectPeer(EP, routed=False)}


def test_failed_attempts_back_off_exponentially() -> None:
    """A symmetric NAT: handshakes never complete; attempts get rarer, bounded."""
    t = DirectTable(me=ME)
    now = NOW
    attempts: list[int] = []
    trying = False
    while now < NOW + 3_600_000:
        plan = t.update(now, {K: EP}, {K: (None, 0)})
        if K in plan and not trying:
            attempts.append(now)  # a new attempt starts (WireGuard peer added)
        trying = K in plan
        now += 1000
    waits = [b - a - ATTEMPT_MS for a, b in itertools.pairwise(attempts)]
    assert len(attempts) < 25  # vs 3,600 ticks: no handshake flood
    assert waits[4] > waits[0] * 4  # exponential: 2^4 = 16 (each wait P/2 .. 3P/2)
    assert max(waits) <= 1.5 * backoff_period_ms(64) + 2000  # capped
    assert backoff_period_ms(64) <= BACKOFF_MAX_MS


def test_backoff_schedule() -> None:
    assert backoff_period_ms(0) == 0
    top = max(BACKOFF_BASE_MS * 2**k for k in range(20) if BACKOFF_BASE_MS * 2**k <= BACKOFF_MAX_MS)
    for f in range(1, 20):
        assert backoff_period_ms(f) == min(top, BACKOFF_BASE_MS * 2 ** (f - 1))
    rng = random.Random(3)
    for _ in range(2000):
        now, phase = NOW + rng.randrange(10**9), rng.randrange(2**64)
        f = rng.randrange(1, 12)
        p = backoff_period_ms(f)
        at = retry_slot_ms(now, f, phase)
        assert now + p // 2 <= at < now + p // 2 + p  # a wait of P/2 .. 3P/2
        assert (at - phase) % p == 0  # on the pair's grid
        # a longer period's slot is also a slot of every shorter one
        for g in range(1, f):
            assert (at - phase) % backoff_period_ms(g) == 0


def test_a_backoff_base_under_a_millisecond_still_backs_off() -> None:
    assert backoff_period_ms(1, 0) == 1 and backoff_period_ms(3, 0) == 4
    assert retry_slot_ms(NOW, 1, 12345, 0) >= NOW


def test_both_ends_of_a_pair_retry_in_the_same_slots() -> None:
    """Hole punching needs both ends to send at once. One end starts 7 s after the
    other (it saw the record later) and an endpoint change resets it once; no
    handshake ever completes. After the backoff has grown, every attempt of
    either end starts together with one of the other's (they drifted apart
    with each end's own jittered delay: minutes without a common attempt)."""
    a, b = DirectTable(me=ME), DirectTable(me=K)
    starts: dict[str, list[int]] = {"a": [], "b": []}
    ep_a, ep_b = "198.51.100.2:4000", EP
    trying = {"a": False, "b": False}
    for t in range(NOW, NOW + 3_600_000, 500):
        if t == NOW + 100_000:
            ep_a = "198.51.100.2:4001"  # a moved: b starts over at once
        for name, table, key, ep, begin in (
            ("a", a, K, ep_b, NOW),
            ("b", b, ME, ep_a, NOW + 7_000),
        ):
            if t < begin:
                continue
            plan = table.update(t, {key: ep}, {key: (None, 0)})
            if key in plan and not trying[name]:
                starts[name].append(t)
            trying[name] = key in plan
    late = [s for s in starts["a"] if s > NOW + 1_200_000]
    assert len(late) >= 5
    for s in late:
        assert min(abs(s - x) for x in starts["b"]) <= 500, (s, starts["b"])
    for s in (x for x in starts["b"] if x > NOW + 1_200_000):
        assert min(abs(s - x) for x in starts["a"]) <= 500, (s, starts["a"])


def test_endpoint_change_restarts_the_attempt_at_once() -> None:
    t = DirectTable(me=ME)
    t.update(NOW, {K: EP}, {})
    for i in range(1, 20):
        t.update(NOW + i * 1000, {K: EP}, {K: (None, 0)})
    assert t.state(K) == "backoff"
    new = "203.0.113.9:4001"
    assert t.update(NOW + 21_000, {K: new}, {}) == {K: DirectPeer(new, routed=False)}


def test_unchosen_target_is_dropped() -> None:
    t = DirectTable(me=ME)
    t.update(NOW, {K: EP}, {})
    assert t.update(NOW + 1000, {}, {}) == {}
    assert t.state(K) == "none"


# --------------------------------------------------------------------------- desired config
def test_desired_config_adds_direct_peer_and_routes_its_address_only_when_up() -> None:
    p, a, b = peer(30), client(0, "203.0.113.1:4000"), client(1, EP)
    a = a.evolve(IDS[0], NOW + 1, assigned_peer=p.wg_key)
    recs = [p, a, b]

    def cfg(routed: bool) -> object:
        iface, _ = desired_config(
            mesh_id=MESH,
            self_key=a.wg_key,
            private_key=IDS[0].wg_private_key,
            role=Role.CLIENT,
            listen_port=51820,
            records=recs,
            ifname="smegtest",
            direct={b.wg_key: DirectPeer(EP, routed)},
        )
        return iface.peers

    trying = cfg(False)
    assert trying[b.wg_key].endpoint == EP  # type: ignore[index]
    assert trying[b.wg_key].allowed_ips == frozenset()  # type: ignore[index]
    assert trying[b.wg_key].keepalive == DIRECT_KEEPALIVE_S  # type: ignore[index]
    assert trying[p.wg_key].allowed_ips  # type: ignore[index]  # relay keeps the prefix
    up = cfg(True)
    assert up[b.wg_key].allowed_ips == frozenset({f"{b.address}/128"})  # type: ignore[index]


def test_old_handshake_does_not_bring_a_session_up_and_an_aged_one_goes_stale() -> None:
    t = DirectTable(me=ME)
    now = NOW
    t.update(now, {K: EP}, {})
    now += 1000
    # bytes arrive (handshake initiations) but the handshake is from before this attempt
    assert t.update(now, {K: EP}, {K: ((NOW - 60_000) / 1000, 500)})[K].routed is False
    now += 1000
    assert t.update(now, {K: EP}, {K: (now / 1000, 600)})[K].routed is True
    hs = now / 1000
    rx = 600
    while t.state(K) == "up":  # bytes keep coming but no new handshake for > 3 min
        now += 1000
        rx += 92
        t.update(now, {K: EP}, {K: (hs, rx)})
    assert HANDSHAKE_MAX_AGE_MS < now - hs * 1000 <= HANDSHAKE_MAX_AGE_MS + 1000
    assert t.state(K) == "backoff"


# --------------------------------------------------------------------------- daemon helpers
def test_observed_endpoint_only_after_a_handshake() -> None:
    from smegmesh.core.direct_plan import local_endpoints
    from smegmesh.core.wgconfig import InterfaceStatus, PeerStatus
    from smegmesh.daemon.direct import observed_endpoint

    def st(hs: float | None, ep: str | None) -> InterfaceStatus:
        p = PeerStatus(K, ep, frozenset(), 25, hs, 0, 0)
        return InterfaceStatus("smegtest", None, 51820, {K: p})

    assert observed_endpoint(st(NOW / 1000, "[2001:db8::fe1]:40001"), K) == "[2001:db8::fe1]:40001"
    assert observed_endpoint(st(None, "[2001:db8::fe1]:40001"), K) is None  # no handshake
    assert observed_endpoint(st(NOW / 1000, None), K) is None
    assert observed_endpoint(st(NOW / 1000, "garbage"), K) is None
    assert observed_endpoint(None, K) is None
    assert observed_endpoint(st(NOW / 1000, "192.0.2.7:1"), IDS[2].wg_public_key) is None
    addrs = ["192.168.1.10", "2001:db8::5", "bad addr", *[f"10.0.0.{i}" for i in range(9)]]
    eps = local_endpoints(51820, addrs)
    assert eps[:2] == ("192.168.1.10:51820", "[2001:db8::5]:51820") and len(eps) == 4


# --------------------------------------------------------------------------- both directions
def test_session_falls_back_when_only_our_direction_breaks() -> None:
    """The other's keepalives still arrive (bytes grow) but our echoes go unanswered:
    stale within PROBE_STALE_MS (+ one tick), not after the other end notices."""
    t = DirectTable(me=ME)
    now = NOW
    t.update(now, {K: EP}, {}, {})
    now += 500
    assert t.update(now, {K: EP}, {K: (now / 1000, 148)}, {})[K].routed is True
    hs, rx = now / 1000, 148
    for _ in range(10):  # echoes answered: stays up
        now += 500
        rx += 32
        assert t.update(now, {K: EP}, {K: (hs, rx)}, {K: now - 100})[K].routed is True
    broke, last_reply = now, now - 100
    while t.state(K) == "up":
        now += 500
        rx += 32  # keepalives from the other end keep arriving
        t.update(now, {K: EP}, {K: (hs, rx)}, {K: last_reply})
    assert now - broke <= PROBE_STALE_MS + 500
    assert t.state(K) == "backoff"


def test_echoes_get_a_grace_period_after_the_session_comes_up() -> None:
    t = DirectTable(me=ME)
    t.update(NOW, {K: EP}, {}, {})
    up = NOW + 500
    assert t.update(up, {K: EP}, {K: (up / 1000, 148)}, {})[K].routed is True
    # no echo answered yet (the route moves after the reconcile): not stale before the grace
    now, rx = up, 148
    while now + 500 - up <= PROBE_STALE_MS:
        now += 500
        rx += 32
        assert t.update(now, {K: EP}, {K: (up / 1000, rx)}, {K: 0})[K].routed is True


def test_without_echoes_received_bytes_decide() -> None:
    t = DirectTable(me=ME)
    t.update(NOW, {K: EP}, {}, None)
    now = NOW + 500
    t.update(now, {K: EP}, {K: (now / 1000, 148)}, None)
    rx = 148
    for _ in range(20):  # no echo socket: up as long as bytes arrive
        now += 500
        rx += 32
        assert t.update(now, {K: EP}, {K: (NOW / 1000 + 0.5, rx)}, None)[K].routed is True


def test_backoff_base_is_configurable() -> None:
    t = DirectTable(me=ME, attempt_ms=3000, backoff_base_ms=1000)
    now = NOW
    starts = []
    trying = False
    while now < NOW + 30_000:
        plan = t.update(now, {K: EP}, {K: (None, 0)})
        if K in plan and not trying:
            starts.append(now)
        trying = K in plan
        now += 100
    waits = [b - a - 3000 for a, b in itertools.pairwise(starts)]
    assert 4 <= len(starts) <= 6, starts
    assert 700 <= waits[0] <= 1400 and waits[2] >= 2 * waits[0]


# --------------------------------------------------------------------------- echo prober
def test_prober_counts_only_our_replies_from_the_address_probed() -> None:
    import struct

    from smegmesh.daemon.probe import ECHO_REPLY, ECHO_REQUEST, MAX_PENDING, Prober

    p = Prober()
    p._seq = 40
    p._pending[41] = ("fd00::2", 0)  # as send() records it (no socket here)
    p._pending[42] = ("fd00::3", 0)

    def pkt(typ: int, ident: int, seq: int) -> bytes:
        return struct.pack("!BBHHH", typ, 0, 0, ident, seq) + b"x" * 8

    p.on_packet(pkt(ECHO_REPLY, p.ident ^ 1, 41), "fd00::2")  # another process's echo
    p.on_packet(pkt(ECHO_REQUEST, p.ident, 41), "fd00::2")  # not a reply
    p.on_packet(pkt(ECHO_REPLY, p.ident, 41), "fd00::9")  # from another member
    p.on_packet(pkt(ECHO_REPLY, p.ident, 43), "fd00::2")  # never sent
    p.on_packet(b"\x81\x00", "fd00::2")  # truncated
    assert p.reply_ms("fd00::2") == 0 and p.rtt_ms("fd00::2") is None
    p.on_packet(pkt(ECHO_REPLY, p.ident, 41), "fd00:0::2")  # same address, other spelling
    assert p.reply_ms("fd00::2") > 0 and p.rtt_ms("fd00::2") is not None
    p.on_packet(pkt(ECHO_REPLY, p.ident, 41), "fd00::2")  # a duplicate counts once
    assert 41 not in p._pending
    p.keep(["fd00::3"])
    assert p.rtt_ms("fd00::2") is None  # forgotten: bounded state
    for _ in range(MAX_PENDING + 10):  # sends without a socket do nothing
        p.send("fd00::4")
    assert len(p._pending) <= MAX_PENDING


def test_prober_round_trip_on_loopback() -> None:
    """A real raw ICMPv6 socket: the kernel answers our echo to ::1 (skipped without privilege)."""
    import asyncio

    from smegmesh.daemon.probe import Prober

    async def go() -> None:
        p = Prober()
        if not p.open():
            missing("no raw ICMPv6 socket (needs root or CAP_NET_RAW)")
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while p.rtt_ms("::1") is None:
                assert asyncio.get_running_loop().time() < deadline, "no echo reply from ::1"
                p.send("::1")
                await asyncio.sleep(0.2)
            assert p.rtt_ms("::1") is not None and p.reply_ms("::1") > 0
        finally:
            p.close()

    asyncio.run(go())


def _client_manager(
    i: int = 0,
    port: int = 51820,
    opts: dict[str, object] | None = None,
    records: list[NodeRecord] | None = None,
) -> tuple[Any, Any]:
    """A ``DirectManager`` of client ``i`` and its one mesh runtime (fakes of the
    daemon's parts the port moves read and write), on WireGuard port ``port``;
    ``records``: the mesh's live records (``_sessions_with`` reads them)."""
    import asyncio
    from types import SimpleNamespace

    from smegmesh.daemon.direct import DirectManager

    rt = SimpleNamespace(mesh_id=MESH, listen_port=port, opts=opts or {})
    rt.dirty_wg = rt.dirty_disk = False
    recs = records or []
    rt.node = SimpleNamespace(
        gossip=GossipParams(),
        mesh=SimpleNamespace(version=1),
        live_records=lambda: recs,
        evicted=None,
    )
    node = SimpleNamespace(
        meshes={MESH: rt}, identity=IDS[i], _reconcile_wake=asyncio.Event(), config=None
    )
    return DirectManager(node, 8), rt


# --------------------------------------------------------------------------- same NAT, same port
def test_relocated_port_is_per_node_and_avoids_taken_ports() -> None:
    from smegmesh.core.direct_plan import RELOCATE_HI, RELOCATE_LO, relocated_port

    ports = {relocated_port(MESH, IDS[i].wg_public_key, set()) for i in range(20)}
    assert len(ports) == 20 and all(RELOCATE_LO <= x <= RELOCATE_HI for x in ports)
    k = IDS[0].wg_public_key
    first = relocated_port(MESH, k, set())
    assert relocated_port(MESH, k, set()) == first  # stable
    assert relocated_port(MESH, k, {first}) != first


def test_client_moves_its_port_once_when_the_nat_did_not_keep_it() -> None:
    """Two clients behind one NAT on the mesh's default port: the one the NAT maps
    elsewhere moves (once) to a port of its own; --wgport is never overridden."""
    m, rt = _client_manager()
    assert m._relocate(rt, "203.0.113.5:51820") is False  # port kept by the NAT
    assert m._relocate(rt, "203.0.113.5:1024") is True
    assert rt.listen_port != 51820 and rt.dirty_wg and rt.dirty_disk
    moved = rt.listen_port
    assert m._relocate(rt, "203.0.113.5:2048") is False  # once
    assert rt.listen_port == moved
    m, rt = _client_manager(opts={"wgport": 51820})
    assert m._relocate(rt, "203.0.113.5:1024") is False and rt.listen_port == 51820


def test_of_two_clients_sharing_a_port_behind_one_nat_both_move() -> None:
    """The NAT kept the port for both (each talks to another relay): their mappings
    would clash at the first common partner. Both move, each to a port of its own:
    when only one did, the NAT's mappings of the shared port that the mover had
    made kept the one that stayed from the mover's first partners (the NAT66
    test's flake)."""
    recs = {i: client(i, "203.0.113.5:51820", (f"192.168.1.{10 + i}:51820",)) for i in (0, 1)}
    other_nat = client(2, "198.51.100.7:51820", ("192.168.1.12:51820",))

    def moved_to(i: int, others: list[NodeRecord]) -> int | None:
        m, rt = _client_manager(i)
        seen = [recs[i], *others]
        assert not m._shared_port(rt, recs[i], seen, now_ms=NOW)  # not at once (see below)
        later = NOW + DELAY
        return rt.listen_port if m._shared_port(rt, recs[i], seen, now_ms=later) else None

    a, b = moved_to(0, [recs[1]]), moved_to(1, [recs[0]])
    assert a is not None and b is not None and len({a, b, 51820}) == 3  # both, apart
    assert moved_to(0, [other_nat]) is None  # same port behind another NAT: no clash


def test_a_clash_moves_us_after_the_delay_even_when_the_port_mate_moved_on() -> None:
    """The race in "both move": a client that moved at once replaced its record
    (the one showing the clash) within a discovery or two, and a port-mate that
    had not seen it yet saw no clash and stayed on the shared public port,
    where the mover's first direct attempts had left mappings in the NAT. Now
    a clash moves a client DELAY after it first sees it: until
    then its port, and so its record, stay as they are for the port-mate to
    see. And the clash, once seen, is kept: the port-mate moving on first
    (its own delay ran out sooner) does not keep us on the port both held."""
    me = client(0, "203.0.113.5:51820", ("192.168.1.10:51820",))
    mate = client(1, "203.0.113.5:51820", ("192.168.1.11:51820",))
    mate_moved = client(1, "203.0.113.5:50123", ("192.168.1.11:50123",))
    m, rt = _client_manager()
    assert not m._shared_port(rt, me, [me, mate], now_ms=NOW)
    half = NOW + DELAY // 2
    assert not m._shared_port(rt, me, [me, mate_moved], now_ms=half)
    assert rt.listen_port == 51820 and not rt.dirty_wg  # our record still shows the clash
    assert m._shared_port(rt, me, [me, mate_moved], now_ms=NOW + DELAY)
    assert rt.listen_port != 51820 and rt.dirty_wg and m._schedule(MESH).clash_ms is None
    # with no clash ever seen nothing is due
    m1, rt1 = _client_manager()
    assert not m1._shared_port(rt1, me, [me, mate_moved], now_ms=NOW)
    assert not m1._shared_port(rt1, me, [me, mate_moved], now_ms=NOW + 10 * DELAY)
    assert rt1.listen_port == 51820 and m1._schedule(MESH).clash_ms is None
    # and a user's port never moves
    m2, rt2 = _client_manager(opts={"wgport": 51820})
    assert not m2._shared_port(rt2, me, [me, mate_moved], now_ms=NOW + 10 * DELAY)
    assert not m2._shared_port(rt2, me, [me, mate], now_ms=NOW)
    assert not m2._shared_port(rt2, me, [me, mate], now_ms=NOW + 10 * DELAY)
    assert rt2.listen_port == 51820 and m2._schedule(MESH).clash_ms is None


def test_no_direct_session_while_a_clash_move_is_due() -> None:
    """Sessions on the port we are about to leave broke at the move: in the
    NAT66 test every pair came up direct on the shared port, then the delayed
    clash move sent a ping run through the relay. While a clash move is due
    the client holds no direct session; after the move, sessions as chosen."""
    import asyncio

    me = client(0, "203.0.113.5:51820", ("192.168.1.10:51820",))
    mate = client(1, "203.0.113.5:51820", ("192.168.1.11:51820",))
    other = client(2, "198.51.100.7:51820", ("192.168.7.12:51820",))
    recs = [me, mate, other]
    m, rt = _client_manager(records=recs)
    assert m._sessions_with(rt, me, now_ms=NOW) == {}  # the clash seen: a move is due
    assert m._sessions_with(rt, me, now_ms=NOW + DELAY - 1) == {}
    chosen = m._sessions_with(rt, me, now_ms=NOW + DELAY)  # moved
    assert rt.listen_port != 51820 and m._schedule(MESH).clash_ms is None
    assert set(chosen) == {mate.wg_key, other.wg_key}
    # a clash seen before the mesh went down (or we stopped being a client) is
    # stale when it is back: no move at the first tick after
    m3, rt = _client_manager(records=recs)
    rt.node.record, rt.up, rt.joining = me, False, False
    assert m3._sessions_with(rt, me, now_ms=NOW) == {}
    asyncio.run(m3._tick(rt))
    assert m3._schedule(MESH).clash_ms is None and rt.listen_port == 51820
    # no clash (a port-mate on another port): sessions at once
    m2, rt = _client_manager(port=51000, records=recs)
    assert set(m2._sessions_with(rt, me, now_ms=NOW)) == {mate.wg_key, other.wg_key}


def test_port_mates_on_one_derived_port_move_once_more_then_stay() -> None:
    """Two clients behind one NAT that moved to the same derived port (their
    derived ports collide) still clash: each moves once more, to the port of
    the next salt; after that no clash moves them again."""
    from smegmesh.core.direct_plan import relocated_port

    q = relocated_port(MESH, IDS[0].wg_public_key, set())
    m, rt = _client_manager(port=q)
    m._schedule(MESH).moved(NOW)  # the first move, to q
    me = client(0, "203.0.113.5:51820", (f"192.168.1.10:{q}",))
    mate = client(1, "203.0.113.5:51820", (f"192.168.1.11:{q}",))  # landed on q too
    assert not m._shared_port(rt, me, [me, mate], now_ms=NOW)
    assert m._shared_port(rt, me, [me, mate], now_ms=NOW + DELAY)
    assert rt.listen_port == relocated_port(MESH, IDS[0].wg_public_key, set(), salt=1) != q
    # a third clash (however unlikely) moves it no more
    rt.listen_port = q
    later = NOW + 3 * DELAY
    assert not m._shared_port(rt, me, [me, mate], now_ms=later)
    assert not m._shared_port(rt, me, [me, mate], now_ms=later + DELAY)
    assert rt.listen_port == q and m._schedule(MESH).clash_ms is None


def test_a_move_after_a_restart_never_lands_on_the_port_it_leaves() -> None:
    """After a restart the schedule is new (no moves) but the port moved to is
    kept: a move then went to the next free port after the derived one (not
    derived, so the rule for moved port-mates fired again). It goes to the
    next salt's derived port."""
    from smegmesh.core.direct_plan import relocated_port

    key = IDS[0].wg_public_key
    q = relocated_port(MESH, key, set())
    m, rt = _client_manager(port=q)  # a fresh schedule: the daemon restarted
    assert m._move(rt, "the NAT maps it elsewhere")
    assert rt.listen_port == relocated_port(MESH, key, set(), salt=1) != q


def test_leaving_a_mesh_forgets_its_port_moves() -> None:
    """A rejoin starts on the default port: its port-mates' moves must be able
    to move it again (keeping two moves made it stay on the shared port)."""
    import asyncio
    from types import SimpleNamespace

    from smegmesh.core.direct_plan import DirectSchedule
    from smegmesh.daemon.direct import DirectManager

    node = SimpleNamespace(meshes={})
    m = DirectManager(node, 8)
    m.schedules[MESH] = DirectSchedule(moved_ms=NOW, moves=2)

    async def run() -> None:
        task = asyncio.create_task(m._run())
        deadline = asyncio.get_running_loop().time() + 10
        while MESH in m.schedules and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert MESH not in m.schedules


def test_a_tick_that_fails_is_logged_once_then_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client whose direct sessions never start says why (it was a debug line per tick)."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from smegmesh.daemon.direct import DirectManager

    rt = SimpleNamespace(mesh_id=MESH)
    node = SimpleNamespace(meshes={MESH: rt})
    m = DirectManager(node, 8)
    calls = 0

    async def broken(_rt: object) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("assigned peer")

    m._tick = broken  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.create_task(m._run())
        deadline = asyncio.get_running_loop().time() + 10
        while calls < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.INFO, logger="smegmesh.daemon.direct"):
        asyncio.run(run())
    assert calls >= 3
    lines = [r.getMessage() for r in caplog.records if "direct sessions" in r.getMessage()]
    assert len(lines) == 1, lines  # the first at once, the rest in the minute's summary
    assert MESH in lines[0] and "KeyError" in lines[0] and "assigned peer" in lines[0]
