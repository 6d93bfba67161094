"""A client leaves a peer whose WireGuard tunnel never handshakes (core.tunnel).

Before, a client moved on only when its peer stopped answering pings over the
control transport: a peer whose control port answered while its WireGuard
port was blocked kept the client, with no data path, for good.
"""

from __future__ import annotations

from typing import Any

from smegmesh.core.meshnode import MeshNode
from smegmesh.core.tunnel import (
    FIRST_HANDSHAKE_MS,
    MOVE_BACKOFF_MAX_MS,
    REJECT_AFTER_MS,
    TunnelMove,
    TunnelWatch,
    tunnel_of,
)
from smegmesh.core.wgconfig import InterfaceStatus, PeerStatus
from test_meshnode import settled_client

P, Q = b"p" * 32, b"q" * 32
KA = 25  # the client default, seconds


def _first_dead(w: TunnelWatch, peer: bytes, hs: int | None, t0: int, step: int = 5_000) -> int:
    """Report ``hs`` every ``step`` ms from ``t0``: when the watch says dead."""
    t = t0
    while w.seen(peer, hs, KA, t) is None:
        t += step
        assert t < t0 + 3_600_000, "never dead"
    return t


def test_no_handshake_within_the_first_grace_is_dead() -> None:
    w = TunnelWatch()
    assert _first_dead(w, P, None, 1_000) - 1_000 == FIRST_HANDSHAKE_MS


def test_a_working_tunnel_is_never_dead() -> None:
    """Handshakes as WireGuard makes them with 25 s keepalives: every 120-145 s
    when the client initiates, up to 180 s + a keepalive + a few 5 s retries
    (about 215 s) when its peer did. An hour of reports, never dead."""
    w = TunnelWatch()
    hs = 2_000
    for t in range(0, 3_600_000, 5_000):
        if t - hs >= 215_000:
            hs = t
        assert w.seen(P, hs, KA, t) is None


LIMIT = REJECT_AFTER_MS + KA * 1000 + FIRST_HANDSHAKE_MS


def test_a_tunnel_that_stops_handshaking_is_dead_after_the_session_limit() -> None:
    w = TunnelWatch()
    assert w.seen(P, 5_000, KA, 6_000) is None
    assert _first_dead(w, P, 5_000, 6_000, step=1_000) == 6_000 + LIMIT


def test_a_handshake_from_before_the_watch_began_counts_from_then() -> None:
    """A daemon restarted beside a live interface finds an old handshake:
    not dead at once, only if none follows within the limit from then."""
    w = TunnelWatch()
    now = 10_000_000
    assert _first_dead(w, P, now - 230_000, now, step=1_000) == now + LIMIT


def test_silence_is_measured_on_our_clock_not_wireguards() -> None:
    """WireGuard's handshake times are wall-clock times of the past. After a
    clock step of an hour back they lie in the future: the tunnel dying just
    then was judged an hour late. Only a change of the value counts."""
    w = TunnelWatch()
    t = 1_800_000_000_000
    hs = t - 10_000
    assert w.seen(P, hs, KA, t) is None
    w.clock_stepped(-3_600_000)
    t2 = t - 3_600_000
    assert _first_dead(w, P, hs, t2 + 1_000, step=1_000) == t2 + LIMIT
    w2 = TunnelWatch()  # and forward: not dead at once
    assert w2.seen(P, hs, KA, t) is None
    w2.clock_stepped(3_600_000)
    assert w2.seen(P, hs, KA, t + 3_600_000 + 1_000) is None


def test_a_peer_configured_again_gets_a_new_grace() -> None:
    """WireGuard lost the peer (interface re-created): its handshake is gone;
    the grace starts again instead of the old watch calling it dead at once."""
    w = TunnelWatch()
    assert w.seen(P, 1_000, KA, 2_000) is None
    t = 100_000
    assert w.seen(P, None, KA, t) is None
    assert _first_dead(w, P, None, t) - t == FIRST_HANDSHAKE_MS


def test_moves_back_off_until_a_handshake() -> None:
    w = TunnelWatch()
    t, waits = 0, []
    for _ in range(10):
        dead = _first_dead(w, P if len(waits) % 2 else Q, None, t, step=1_000)
        waits.append(dead - t)
        w.moved(dead)
        t = dead
    assert waits[:4] == [FIRST_HANDSHAKE_MS, FIRST_HANDSHAKE_MS, 60_000, 120_000]
    assert max(waits) == MOVE_BACKOFF_MAX_MS
    assert w.seen(P, t + 1_000, KA, t + 2_000) is None  # a handshake: no backoff
    assert _first_dead(w, Q, None, t + 3_000, step=1_000) - (t + 3_000) == FIRST_HANDSHAKE_MS


def test_with_no_other_peer_the_same_handshake_does_not_reset_the_backoff() -> None:
    """One peer, handshaken once, then silent: the watch says so again and
    again, each time later; only a new handshake starts it over."""
    w = TunnelWatch()
    assert w.seen(P, 500, KA, 1_000) is None
    t, waits = 1_000, []
    for _ in range(4):
        dead = _first_dead(w, P, 500, t, step=1_000)
        waits.append(dead - t)
        w.moved(dead)
        t = dead
    assert waits == [LIMIT, FIRST_HANDSHAKE_MS, 60_000, 120_000]
    assert w.seen(P, t, KA, t + 1_000) is None and w.moves == 0


def _dead_tunnel(net: Any, client: MeshNode, peer: bytes) -> TunnelMove:
    """Report no handshake with ``peer`` every 5 s until the client moves."""
    t0 = net.now
    while net.now < t0 + 60_000:
        net.run_until(net.now + 5_000)
        moved = client.tunnel_seen(net.now, peer, None, KA)
        if moved is not None:
            net.handle_outs(client, moved.outs)
            return moved
    raise AssertionError("never moved")


def test_a_client_leaves_a_peer_whose_tunnel_never_handshakes() -> None:
    """Its peer answers every ping; WireGuard never completes a handshake."""
    net, nodes, client, bad = settled_client()
    moved = _dead_tunnel(net, client, bad)
    assert moved.old == bad and moved.new not in (None, bad)
    assert moved.silent_ms >= FIRST_HANDSHAKE_MS
    net.run_until(net.now + 3_000)
    assert client.my_peer() == moved.new
    peers = [n for n in nodes[:-1]]
    assert all(n.mesh.live_record(client.key).assigned_peer == moved.new for n in peers)


def test_a_client_keeps_a_peer_whose_tunnel_works() -> None:
    net, _, client, peer = settled_client()
    for _ in range(60):
        net.run_until(net.now + 5_000)
        assert client.tunnel_seen(net.now, peer, net.now - 1_000, KA) is None
    assert client.my_peer() == peer


def test_without_keepalives_nothing_is_judged() -> None:
    """An idle tunnel without persistent keepalives makes no handshake: never a move."""
    net, _, client, peer = settled_client()
    assert not client.tunnel_watched(0)
    for _ in range(60):
        net.run_until(net.now + 5_000)
        assert client.tunnel_seen(net.now, peer, None, 0) is None
    assert client.my_peer() == peer


def test_a_report_of_a_peer_no_longer_ours_is_ignored() -> None:
    net, nodes, client, peer = settled_client()
    other = next(n.key for n in nodes[:-1] if n.key != peer)
    for _ in range(20):
        net.run_until(net.now + 5_000)
        assert client.tunnel_seen(net.now, other, None, KA) is None


def test_a_peer_with_a_dead_tunnel_is_not_taken_back_for_a_missed_ping() -> None:
    """Two peers: X's tunnel was dead, the client went to Y. Y misses pings
    for a moment: every peer is avoided now. The client went back to the first
    in its order, X (declared dead seconds before), and returned to Y when
    Y's short avoid ended: two moves for a hiccup. It now stays with the peer
    avoided the shortest, Y."""
    net, _, client, x = settled_client(2)
    moved = _dead_tunnel(net, client, x)
    y = moved.new
    assert y is not None and y != x
    net.run_until(net.now + 2_000)
    assert client.my_peer() == y
    net.down.add(y)  # a few pings lost
    net.run_until(net.now + 8_000)
    net.down.discard(y)
    assert client._avoid.get(y, 0) > net.now and client._avoid[x] > client._avoid[y]
    assert client.my_peer() == y
    net.run_until(net.now + 10_000)
    assert client.my_peer() == y
    assert client._avoid[x] > net.now  # X still avoided: Y is kept as avoided the shortest


def test_a_peer_without_an_endpoint_is_not_judged() -> None:
    """A peer added while its endpoint's name had not resolved yet has no
    endpoint: no handshake can start, whoever's fault; it is not judged."""

    def status(endpoint: str | None, handshake: float | None) -> InterfaceStatus:
        peer = PeerStatus(P, endpoint, frozenset(), KA, handshake, 0, 0)
        return InterfaceStatus("wg0", None, 51820, {P: peer})

    assert tunnel_of(InterfaceStatus("wg0", None, 51820, {}), P) == (False, None)
    assert tunnel_of(status(None, None), P) == (False, None)
    assert tunnel_of(status("192.0.2.1:51820", None), P) == (True, None)
    assert tunnel_of(status("192.0.2.1:51820", 1_700_000_000.25), P) == (True, 1_700_000_000_250)


def _status(peer: bytes, handshake_ms: int | None) -> InterfaceStatus:
    hs = None if handshake_ms is None else handshake_ms / 1000
    p = PeerStatus(peer, "192.0.2.1:51820", frozenset(), KA, hs, 0, 0)
    return InterfaceStatus("wg0", None, 51820, {peer: p})


def test_our_own_interface_set_down_is_not_blamed_on_our_peer() -> None:
    """``ip link set wg0 down`` beside smegd: WireGuard keeps its last handshake
    time and sends nothing. The read that found our link down was ignored:
    the client went on counting the silence from that handshake, and moved
    from an honest peer (avoided for 10 minutes) as soon as the link was up
    again without a new handshake yet (the health check brings it up just
    before). A read of a down link starts the watch again; a peer silent for
    the whole limit after that is still left."""
    net, _, client, peer = settled_client()
    hs = net.now  # a handshake, then silence (the link is about to go down)
    assert client.tunnel_read(net.now, _status(peer, hs), KA) is None
    t_down = hs + LIMIT - 5_000
    net.run_until(t_down)
    assert client.tunnel_read(net.now, _status(peer, hs), KA, link_up=False) is None
    net.run_until(net.now + 5_000)  # up again, the new handshake not made yet
    assert client.tunnel_read(net.now, _status(peer, hs), KA) is None
    assert client.my_peer() == peer and client._avoid.get(peer, 0) <= net.now
    # and no handshake for the whole limit after that: the peer is left
    t_up, moved = net.now, None
    while moved is None and net.now < t_up + LIMIT + 10_000:
        net.run_until(net.now + 5_000)
        moved = client.tunnel_read(net.now, _status(peer, hs), KA)
    assert moved is not None and moved.old == peer and net.now >= t_up + LIMIT


def test_a_link_that_stays_down_never_blames_the_peer() -> None:
    """Down for an hour (smegd cannot bring it up): no move, however silent."""
    net, _, client, peer = settled_client()
    assert client.tunnel_read(net.now, _status(peer, net.now), KA) is None
    for _ in range(720):
        net.run_until(net.now + 5_000)
        assert client.tunnel_read(net.now, _status(peer, None), KA, link_up=False) is None
    assert client.my_peer() == peer
