"""A client leaves a peer that handshakes, answers pings and forwards nothing (core.forwardwatch).

Before, a client judged its peer by its pings (underlay) and WireGuard's
handshakes: a peer that answered both and dropped every packet it should
forward into the mesh kept its client, with no path into the mesh, for good.
The client now probes other members through the peer (their overlay address)
and directly (their control endpoint).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

from smegmesh.core.forwardwatch import (
    FAILS_TO_BLAME,
    FORWARD_BACKOFF_MAX_MS,
    PROBE_EVERY_MS,
    QUICK_PROBE_MS,
    ForwardMove,
    ForwardWatch,
)
from smegmesh.core.meshnode import MeshNode
from test_meshnode import settled_client

KA = 25
#: (peer, member probed) -> (answered over the overlay, over the underlay)
Outcome = Callable[[bytes, bytes], tuple[bool, bool]]


def _run(
    net: Any,
    client: MeshNode,
    outcome: Outcome,
    ms: int,
    stop_on_move: bool = True,
    step: int = 1_000,
) -> tuple[list[ForwardMove], list[bytes]]:
    """``ms`` of a client whose tunnel handshakes, in steps of ``step`` ms; probes
    answered as ``outcome`` says. (The moves, the members probed.)"""
    moves: list[ForwardMove] = []
    probed: list[bytes] = []
    end = net.now + ms
    while net.now < end:
        net.run_until(net.now + step)
        peer = client.my_peer()
        assert peer is not None
        if net.now % 5_000 < step:  # the adapter's read every 5 s: a fresh handshake
            assert client.tunnel_seen(net.now, peer, net.now - 2_000, KA) is None
        target = client.forward_probe(net.now, KA)
        if target is None:
            continue
        assert target not in (peer, client.key)
        probed.append(target)
        move = client.forward_result(net.now, target, *outcome(peer, target), KA)
        if move is not None:
            net.handle_outs(client, move.outs)
            moves.append(move)
            if stop_on_move:
                break
    return moves, probed


def test_a_client_leaves_a_peer_that_forwards_nothing() -> None:
    net, nodes, client, bad = settled_client(4)
    moves, _ = _run(net, client, lambda p, m: (p != bad, True), 300_000)
    assert moves, "never moved"
    (move,) = moves
    assert move.old == bad and move.new not in (None, bad)
    assert len(set(move.members)) == FAILS_TO_BLAME and bad not in move.members
    # the first probe within 1.5 probe periods, then two quick ones
    assert net.now < 3_000 + PROBE_EVERY_MS * 3 // 2 + 2 * 7_500 + 5_000, net.now
    net.run_until(net.now + 3_000)
    assert client.my_peer() == move.new
    peers = nodes[:-1]
    assert all(n.mesh.live_record(client.key).assigned_peer == move.new for n in peers)
    # the new peer forwards: kept
    again, _ = _run(net, client, lambda p, m: (p != bad, True), 1_200_000, step=5_000)
    assert again == [] and client.my_peer() == move.new


def test_one_hostile_member_cannot_frame_an_honest_peer() -> None:
    """A member that answers our probes directly and never through our peer
    (as if our peer dropped them) fails one member's probes only: 30 minutes,
    no move, and the probes spread over the other members."""
    net, nodes, client, peer = settled_client(4)
    liar = next(n.key for n in nodes[:-1] if n.key != peer)
    moves, probed = _run(net, client, lambda p, m: (m != liar, True), 1_800_000, step=2_000)
    assert moves == [] and client.my_peer() == peer
    assert len(set(probed)) == 3 and liar in probed


def test_a_dead_member_frames_nobody() -> None:
    """Members that answer neither way say nothing of our peer."""
    net, _, client, peer = settled_client(4)
    moves, _ = _run(net, client, lambda p, m: (False, False), 1_800_000, step=2_000)
    assert moves == [] and client.my_peer() == peer


def test_probes_are_bounded() -> None:
    """One probe a probe period (jittered) while they are answered; at most
    FAILS_TO_BLAME - 1 quick ones after failures; one in flight."""
    net, _, client, _ = settled_client(4)
    ms = 1_200_000
    _, probed = _run(net, client, lambda p, m: (True, True), ms, step=2_000)
    assert ms // (PROBE_EVERY_MS * 3 // 2) <= len(probed) <= ms // (PROBE_EVERY_MS // 2)
    t = None
    while t is None:
        net.run_until(net.now + 1_000)
        t = client.forward_probe(net.now, KA)
    assert client.forward_probe(net.now + 3_000, KA) is None  # one in flight
    net2, _, client2, _ = settled_client(4)
    _, probed2 = _run(net2, client2, lambda p, m: (False, False), ms, step=2_000)
    assert len(probed2) <= ms // 4_000


def test_nothing_is_probed_without_handshakes_or_acks() -> None:
    """The tunnel watch and the pings judge a peer that does neither."""
    net, _, client, peer = settled_client(4)
    for _ in range(120):
        net.run_until(net.now + 1_000)
        assert client.forward_probe(net.now, KA) is None  # no handshake seen
    assert client.forward_probe(net.now, 0) is None  # no keepalives: no tunnel watched
    net.down.add(peer)  # our peer stops answering pings
    net.run_until(net.now + 2_000)
    client.tunnel_seen(net.now, peer, net.now - 1_000, KA)
    net.run_until(net.now + 60_000)
    assert client.forward_probe(net.now, KA) is None or client.my_peer() != peer


def test_a_mesh_that_never_answers_over_the_overlay_moves_its_client_rarely() -> None:
    """Every member bound to its underlay address only (``bindAddress``): every
    peer is blamed in turn, each move waiting longer (30 s doubling to 30 min)."""
    w, rng = ForwardWatch(), random.Random(7)
    peers = [bytes([i]) * 32 for i in range(5)]
    mine, moves = 0, []
    for t in range(0, 6 * 3_600_000, 1_000):
        others = [k for i, k in enumerate(peers) if i != mine]
        target = w.probe(t, peers[mine], others, rng)
        if target is not None and w.result(t, peers[mine], target, False, True, 4, rng):
            w.moved(t)
            moves.append(t)
            mine = (mine + 1) % len(peers)
    gaps = [b - a for a, b in itertools.pairwise(moves)]
    assert 8 <= len(moves) <= 20, moves
    assert gaps[0] < 2 * 60_000 and gaps[-1] >= FORWARD_BACKOFF_MAX_MS, gaps


def test_the_backoff_grows_and_a_forwarding_peer_resets_it() -> None:
    w = ForwardWatch()
    for i in range(12):
        w.moved(i)
    assert w.next_move_ms - 11 == FORWARD_BACKOFF_MAX_MS
    rng = random.Random(1)
    p, m = b"p" * 32, b"m" * 32
    w.peer = p
    w.inflight = m
    assert w.result(20, p, m, True, True, 3, rng) is False
    assert w.moves == 0 and w.next_move_ms == 0


def test_with_one_other_peer_its_failures_alone_blame_ours() -> None:
    """Two peers: the only member to probe is the other peer (documented:
    a hostile other peer can then take the client, docs/SECURITY.md)."""
    net, _, client, bad = settled_client(2)
    moves, probed = _run(net, client, lambda p, m: (p != bad, True), 300_000)
    assert len(moves) == 1 and moves[0].old == bad and moves[0].new is not None
    assert len(probed) >= FAILS_TO_BLAME


def test_the_direct_half_of_a_probe_reaches_a_member_known_by_name() -> None:
    """The direct probe took the control endpoint's host as an address: a member
    published by name was never answered directly, so its probes counted for
    nothing. The name is resolved as the control plane resolves it."""
    import asyncio
    from types import SimpleNamespace

    from smegmesh.daemon.forward_probe import ForwardProbeOps

    sent: list[tuple[str, int]] = []
    results: list[tuple[bool, bool]] = []

    class Dg:
        async def probe(self, ip: str, port: int, *_a: object) -> bytes | None:
            sent.append((ip, port))
            return b"ack"

    async def resolve(endpoint: str) -> str | None:
        return "[2001:db8::9]:4000" if endpoint == "m.example.net:4000" else None

    rec = SimpleNamespace(control_endpoint="m.example.net:4000", address="fd00::9")

    def result(_now: int, _target: bytes, overlay: bool, underlay: bool, _ka: int) -> None:
        results.append((overlay, underlay))

    rt: Any = SimpleNamespace(
        mesh_id="m",
        keepalive=25,
        node=SimpleNamespace(mesh=SimpleNamespace(record=lambda _k: rec), forward_result=result),
    )
    me: Any = SimpleNamespace(
        rpc=SimpleNamespace(datagrams=Dg()),
        control_names=SimpleNamespace(resolve_async=resolve),
        identity=None,
        meshes={"m": rt},
    )
    asyncio.run(ForwardProbeOps._forward_probe(me, rt, b"t" * 32))
    assert sorted(sent) == [("2001:db8::9", 4000), ("fd00::9", 4000)]
    assert results == [(True, True)]


def test_a_newly_assigned_peer_is_probed_within_a_quick_period() -> None:
    """The first probe through a peer came a whole period (15-45 s) after the
    client joined through it or moved to it: a client that moved to a peer
    that forwards nothing either waited that long to find out."""
    rng = random.Random(7)
    others = [bytes([i]) * 32 for i in range(2, 6)]
    for seed in range(20):
        w = ForwardWatch()
        rng.seed(seed)
        assert w.probe(1_000, b"\x01" * 32, others, rng) is None  # scheduled
        assert 1_000 + QUICK_PROBE_MS // 2 <= w.due_ms <= 1_000 + QUICK_PROBE_MS * 3 // 2
        target = w.probe(w.due_ms, b"\x01" * 32, others, rng)
        assert target is not None
        # answered through it: the next a whole period later
        w.result(w.due_ms, b"\x01" * 32, target, True, True, len(others), rng)
        assert w.due_ms - w.inflight_ms >= PROBE_EVERY_MS // 2
        # a move to another peer: checked soon again
        now = w.due_ms
        assert w.probe(now, b"\x09" * 32, others, rng) is None
        assert w.due_ms <= now + QUICK_PROBE_MS * 3 // 2
