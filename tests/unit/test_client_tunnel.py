"""A client leaves a peer whose WireGuard tunnel never handshakes (core.tunnel).

Before, a client moved on only when its peer stopped answering pings over the
control transport: a peer whose control port answered while its WireGuard
port was blocked kept the client, with no data path, for good.
"""

from __future__ import annotations

from smegmesh.core.tunnel import (
    FIRST_HANDSHAKE_MS,
    MOVE_BACKOFF_MAX_MS,
    REJECT_AFTER_MS,
    TunnelWatch,
)
from test_meshnode import mesh_of

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
    """Handshakes as WireGuard makes them with 25 s keepalives: one every
    120-190 s. An hour of reports, never dead."""
    w = TunnelWatch()
    hs = 2_000
    for t in range(0, 3_600_000, 5_000):
        if t - hs >= 190_000:
            hs = t
        assert w.seen(P, hs, KA, t) is None


def test_a_tunnel_that_stops_handshaking_is_dead_after_the_session_limit() -> None:
    w = TunnelWatch()
    assert w.seen(P, 5_000, KA, 6_000) is None
    limit = REJECT_AFTER_MS + KA * 1000 + FIRST_HANDSHAKE_MS
    assert _first_dead(w, P, 5_000, 6_000, step=1_000) == 6_000 + limit


def test_a_handshake_from_before_the_watch_began_counts_from_then() -> None:
    """A daemon restarted beside a live interface finds an old handshake:
    not dead at once, only if none follows."""
    w = TunnelWatch()
    now = 10_000_000
    assert w.seen(P, now - 170_000, KA, now) is None
    assert w.seen(P, now - 170_000, KA, now + 60_000) is None


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


def test_a_client_leaves_a_peer_whose_tunnel_never_handshakes() -> None:
    """Its peer answers every ping; WireGuard never completes a handshake."""
    net, nodes = mesh_of(4, 1)
    client = nodes[-1]
    net.run_until(net.now + 3_000)
    bad = client.my_peer()
    assert bad is not None
    moved = None
    t0 = net.now
    while moved is None and net.now < t0 + 60_000:
        net.run_until(net.now + 5_000)
        moved = client.tunnel_seen(net.now, bad, None, KA)
    assert moved is not None and moved.old == bad and moved.new not in (None, bad)
    assert moved.silent_ms >= FIRST_HANDSHAKE_MS
    net.handle_outs(client, moved.outs)
    net.run_until(net.now + 3_000)
    assert client.my_peer() == moved.new
    peers = [n for n in nodes[:-1]]
    assert all(n.mesh.live_record(client.key).assigned_peer == moved.new for n in peers)


def test_a_client_keeps_a_peer_whose_tunnel_works_or_without_keepalives() -> None:
    net, nodes = mesh_of(4, 1)
    client = nodes[-1]
    net.run_until(net.now + 3_000)
    peer = client.my_peer()
    assert peer is not None
    for _ in range(60):
        net.run_until(net.now + 5_000)
        assert client.tunnel_seen(net.now, peer, net.now - 1_000, KA) is None
        assert client.tunnel_seen(net.now, peer, None, 0) is None  # keepalive off
    assert client.my_peer() == peer


def test_a_report_of_a_peer_no_longer_ours_is_ignored() -> None:
    net, nodes = mesh_of(4, 1)
    client = nodes[-1]
    net.run_until(net.now + 3_000)
    other = next(n.key for n in nodes[:-1] if n.key != client.my_peer())
    for _ in range(20):
        net.run_until(net.now + 5_000)
        assert client.tunnel_seen(net.now, other, None, KA) is None
