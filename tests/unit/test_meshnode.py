"""The protocol engine driven by a tiny in-test network (instant, lossless unless told)."""

from __future__ import annotations

import random
import secrets

import pytest

from smegmesh.core.engine import Input, Out, ReplyReceived, RequestReceived, Respond
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import Bootstrap
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import Call, MeshNode, MeshSettings
from smegmesh.core.messages import IN_REPLY, Ack, JoinReply, JoinRequest, Refusal
from smegmesh.core.record import Role
from smegmesh.core.state import MeshState
from smegmesh.testbed.loopnet import LoopNet

MESH = "amber-falcon-river-k7q2"
GOSSIP = GossipParams(sync_interval_ms=500, pull_interval_ms=3000)
LIVE = LivenessParams.from_heartbeat(2000)


class Net(LoopNet):
    """Delivers calls after 5 ms; every message goes through the wire codec."""

    def add(self, seed: int, role: Role = Role.PEER) -> MeshNode:
        ident = NodeIdentity.from_seed(bytes([seed]) * 32)
        node = MeshNode(
            ident,
            MESH,
            MeshSettings(
                role=role,
                wg_endpoint=f"192.0.2.{seed}:51820" if role == Role.PEER else None,
                control_endpoint=f"192.0.2.{seed}:4000" if role == Role.PEER else None,
                tls_fp=bytes(32),
            ),
            GOSSIP,
            LIVE,
            random.Random(seed),
        )
        return self.attach(node)


def join(net: Net, joiner: MeshNode, via: MeshNode) -> None:
    net.join(joiner, via)


def mesh_of(n_peers: int, n_clients: int = 0) -> tuple[Net, list[MeshNode]]:
    net = Net()
    first = net.add(1)
    net.handle_outs(first, first.start(0))
    nodes = [first]
    for i in range(2, n_peers + 1):
        n = net.add(i)
        join(net, n, nodes[-1])
        nodes.append(n)
        net.run_until(net.now + 200)
    for j in range(n_clients):
        c = net.add(100 + j, Role.CLIENT)
        join(net, c, nodes[j % len(nodes)])
        nodes.append(c)
        net.run_until(net.now + 200)
    return net, nodes


def settled_client(n_peers: int = 4) -> tuple[Net, list[MeshNode], MeshNode, bytes]:
    """``mesh_of(n_peers, 1)`` 3 s on: (net, nodes, the client, its peer's key)."""
    net, nodes = mesh_of(n_peers, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    peer = client.my_peer()
    assert peer is not None
    return net, nodes, client, peer


def converged(nodes: list[MeshNode]) -> bool:
    return len({n.mesh.digest() for n in nodes}) == 1


def test_members_converge_after_joins() -> None:
    net, nodes = mesh_of(6, 2)
    net.run_until(net.now + 5000)
    assert converged(nodes)
    assert all(len(n.live_records()) == 8 for n in nodes)


def test_join_without_valid_token_is_refused_and_reveals_nothing() -> None:
    net, nodes = mesh_of(2)
    stranger = net.add(50)
    net.handle_outs(stranger, stranger.start(net.now))
    own = stranger.mesh.record(stranger.key)
    assert own is not None
    reply, outs = nodes[0].handle_request(
        stranger.key, JoinRequest(MESH, b"\x01" * 16, own), net.now
    )
    assert isinstance(reply, Refusal) and outs == []
    assert nodes[0].mesh.record(stranger.key) is None
    # a non-member's sync or push is refused too
    from smegmesh.core.sync import SyncSession

    s = SyncSession.initiator(MeshState(MESH), 0, rng=random.Random(0))
    reply, _ = nodes[0].handle_request(stranger.key, s.start(), net.now)
    assert isinstance(reply, Refusal)


def test_token_uses_are_limited() -> None:
    net, nodes = mesh_of(2)
    token, outs = nodes[0].invite(
        net.now,
        ttl_ms=60_000,
        uses=1,
        bootstrap=[Bootstrap("x:1", bytes(32), nodes[0].key)],
        secret=secrets.token_bytes(16),
    )
    net.handle_outs(nodes[0], outs)
    a, b = net.add(60), net.add(61)
    for j in (a, b):
        net.handle_outs(j, j.start(net.now))
    ra, _ = nodes[0].handle_request(
        a.key,
        JoinRequest(MESH, token.secret, a.mesh.record(a.key)),
        net.now,  # type: ignore[arg-type]
    )
    rb, _ = nodes[0].handle_request(
        b.key,
        JoinRequest(MESH, token.secret, b.mesh.record(b.key)),
        net.now,  # type: ignore[arg-type]
    )
    assert isinstance(ra, JoinReply) and isinstance(rb, Refusal)


def test_update_spreads_to_everyone_quickly() -> None:
    net, nodes = mesh_of(8)
    net.run_until(net.now + 3000)
    t0 = net.now
    net.handle_outs(nodes[3], nodes[3].update_self(t0, alias="bob"))
    net.run_until(t0 + 500)
    for n in nodes:
        rec = n.mesh.live_record(nodes[3].key)
        assert rec is not None and rec.alias == "bob"


def test_crashed_peer_is_pruned_everywhere_and_restart_refutes() -> None:
    net, nodes = mesh_of(6)
    net.run_until(net.now + 3000)
    victim = nodes[2]
    net.down.add(victim.key)
    t0 = net.now
    net.run_until(t0 + 3 * 2000 + 5000)
    others = [n for n in nodes if n is not victim]
    assert all(n.mesh.live_record(victim.key) is None for n in others)
    assert converged(others)
    # it comes back: sees its own prune through a pull and refutes it
    net.down.discard(victim.key)
    net.run_until(net.now + 30_000)
    assert all(n.mesh.live_record(victim.key) is not None for n in nodes)


def test_client_moves_when_its_peer_dies() -> None:
    net, nodes = mesh_of(4, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    first = client.my_peer()
    assert first is not None
    net.down.add(first)
    net.run_until(net.now + 15_000)
    second = client.my_peer()
    assert second is not None and second != first
    for n in nodes:
        if n.key in net.down:
            continue
        rec = n.mesh.live_record(client.key)
        assert rec is not None and rec.assigned_peer == second


def test_client_order_of_peers_follows_membership_a_peer_at_a_time() -> None:
    """A client keeps its rendezvous order of the peers from the state's change
    log (not ranked again per change of membership): after peers are pruned
    and come back it is still the order ``ranked`` gives."""
    from smegmesh.core.hashing import ranked

    net, nodes = mesh_of(6, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)

    def check() -> None:
        reach = client._reachable_peers()
        assert list(client._ranked_peers()) == ranked(client.identity.rank_key, reach)

    check()
    peers = [n.key for n in nodes[:-1]]
    for gone in peers[1:3]:
        net.down.add(gone)
        net.run_until(net.now + 15_000)
        assert gone not in client._reachable_peers()
        check()
    net.down.clear()
    net.run_until(net.now + 30_000)
    assert sorted(client._reachable_peers()) == sorted(peers)
    check()


def test_unchanged_record_is_refreshed_before_it_ages_out() -> None:
    net, nodes = mesh_of(2)
    n = nodes[0]
    n.refresh_ms = 10_000
    before = n.mesh.record(n.key)
    assert before is not None
    net.run_until(net.now + 12_000)
    after = nodes[1].mesh.record(n.key)
    assert after is not None and after.version > before.version
    assert after.timestamp_ms >= before.timestamp_ms + 10_000


def test_client_moves_when_its_peer_left_and_refuses() -> None:
    """A departed peer's daemon answers the client's pings with Refusal (mesh unknown)."""
    net, nodes = mesh_of(4, 1)
    client = nodes[-1]
    net.run_until(net.now + 3000)
    leaver_key = client.my_peer()
    assert leaver_key is not None
    leaver = net.nodes[leaver_key]
    net.handle_outs(leaver, leaver.leave(net.now))
    net.run_until(net.now + 50)  # the tombstone reaches some peers, never the client

    def refuse(inp: Input) -> list[Out]:
        if isinstance(inp, RequestReceived):
            return [Respond(inp.request_id, Refusal(MESH))]
        return []

    leaver.step = refuse  # type: ignore[method-assign]  # the daemon dropped the mesh
    leaver.next_deadline = lambda: None  # type: ignore[method-assign]
    net.run_until(net.now + 15_000)
    assert client.my_peer() not in (None, leaver_key)
    assert client.mesh.live_record(leaver_key) is None  # learnt from its new peer


def test_incremental_views_equal_a_full_rebuild() -> None:
    """Random record changes, prunes and leaves: the incrementally kept views
    always equal the views computed from scratch."""
    from smegmesh.core.record import NodeRecord, Prune

    rng = random.Random(9)
    idents = [NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(40)]
    me = MeshNode(idents[0], MESH, MeshSettings(), GOSSIP, LIVE, random.Random(1))
    now = 1_000_000
    me.start(now)
    version = {i: 0 for i in range(len(idents))}
    for step in range(300):
        now += 10
        i = rng.randrange(1, len(idents))
        kind = rng.random()
        version[i] = max(version[i] + 1, now)
        if kind < 0.15:
            item: NodeRecord | Prune = Prune.create(
                idents[0],
                MESH,
                target=idents[i].wg_public_key,
                target_version=version[i] - 1,
                now_ms=now,
            )
        else:
            role = Role.CLIENT if kind < 0.4 else Role.PEER
            item = NodeRecord.create(
                idents[i],
                MESH,
                version=version[i],
                now_ms=now,
                role=role,
                control_endpoint=None if role == Role.CLIENT or kind > 0.9 else "192.0.2.1:4000",
                left=kind > 0.95,
            )
        me.mesh.apply(item, now)
        inc = me._views()
        me._view_cache = None
        full = me._views()
        assert [r.wg_key for r in inc.live] == [r.wg_key for r in full.live], step
        assert inc.live == full.live and inc.peers == full.peers
        assert inc.reachable == full.reachable
        assert sorted(inc.my_clients) == sorted(full.my_clients)
        assert sorted(inc.pruned) == sorted(full.pruned)
        me._view_cache = inc  # carry on incrementally


def test_hearing_from_a_pruned_member_heals_it_at_once() -> None:
    """Issue 14, item 6: a call from a member we hold as pruned is proof it is alive.

    The node pushes it its prune at once (bounded: one per member per
    ``HEAL_INTERVAL_MS``) and starts a sync session with it (the first heal of
    the interval); the member refutes its prune and pushes the refutation
    straight back, and the node spreads it: everyone holds it live within a
    few round trips, far below the pull interval.
    """
    from smegmesh.core.messages import Ping
    from smegmesh.core.record import Prune
    from smegmesh.core.sync import Push

    net, nodes = mesh_of(5)
    net.run_until(net.now + 3000)
    victim, hearer = nodes[4], nodes[0]
    others = nodes[:4]
    net.down.add(victim.key)
    t0 = net.now
    while not all(n.mesh.live_record(victim.key) is None for n in others):
        assert net.now - t0 < 20_000, "victim not pruned"
        net.run_until(net.now + 200)
    net.down.discard(victim.key)
    reply, outs = hearer.handle_request(victim.key, Ping(MESH, 7), net.now)
    assert isinstance(reply, Ack)
    heal = [o for o in outs if isinstance(o, Call) and o.to == victim.key]
    assert sorted(type(o.msg).__name__ for o in heal) == ["Push", "SyncStart"], outs
    push = next(o.msg for o in heal if isinstance(o.msg, Push))
    assert any(isinstance(i, Prune) and i.target == victim.key for i in push.items)
    # Bounded: hearing from it again right away starts no second session.
    _reply, again = hearer.handle_request(victim.key, Ping(MESH, 8), net.now + 10)
    assert not [o for o in again if isinstance(o, Call) and o.to == victim.key]
    assert hearer.heal_sessions == 1
    net.handle_outs(hearer, outs)
    t1 = net.now
    net.run_until(t1 + 300)  # a few 5 ms round trips; the pull interval is 3 s
    assert all(n.mesh.live_record(victim.key) is not None for n in nodes)


def test_heals_of_many_pruned_members_start_one_sync_session_per_interval() -> None:
    """Issue 14, item 1: after a partition a node hears from O(N) pruned members.

    A sync session per heal (O(N) differences each after a partition) made the
    heal O(N^2) per node; the 1,000-node partition simulation never finished.
    Each pruned member gets a push of its prune; one sync session per
    ``HEAL_INTERVAL_MS`` in all brings the rest.
    """
    from smegmesh.core.exchange import HEAL_INTERVAL_MS
    from smegmesh.core.messages import Ping
    from smegmesh.core.sync import Push, SyncStart

    net, nodes = mesh_of(6)
    net.run_until(net.now + 3000)
    victims, hearer = nodes[3:], nodes[0]
    for v in victims:
        net.down.add(v.key)
    t0 = net.now
    while not all(n.mesh.live_record(v.key) is None for n in nodes[:3] for v in victims):
        assert net.now - t0 < 30_000, "victims not pruned"
        net.run_until(net.now + 200)
    sent: list[str] = []
    for i, v in enumerate(victims):
        _reply, outs = hearer.handle_request(v.key, Ping(MESH, 7), net.now + i)
        calls = [o for o in outs if isinstance(o, Call) and o.to == v.key]
        assert any(isinstance(c.msg, Push) for c in calls), i
        sent += [type(c.msg).__name__ for c in calls if isinstance(c.msg, SyncStart)]
    assert sent == ["SyncStart"]
    assert hearer.heal_sessions == len(victims)
    # the next interval allows one more
    _reply, outs = hearer.handle_request(victims[0].key, Ping(MESH, 9), net.now + HEAL_INTERVAL_MS)
    assert [o for o in outs if isinstance(o, Call) and isinstance(o.msg, SyncStart)]


def test_push_ack_says_whether_anything_was_new() -> None:
    """Issue 14: the pusher's feedback. ``Ack.ok`` of a ``Push``: news to the target."""
    from smegmesh.core.engine import PushCtx
    from smegmesh.core.sync import Push

    net, nodes = mesh_of(3)
    net.run_until(net.now + 5000)
    a, b = nodes[0], nodes[1]
    held = Push(MESH, tuple(a.mesh.items_for([a.key])))
    reply, _ = b.handle_request(a.key, held, net.now)
    assert isinstance(reply, Ack) and not reply.ok
    own = a.mesh.record(a.key)
    assert own is not None
    fresh = Push(MESH, (own.evolve(a.identity, net.now + 1, description="new"),))
    reply, _ = b.handle_request(a.key, fresh, net.now + 1)
    assert isinstance(reply, Ack) and reply.ok
    # the pusher takes "held it already" as feedback: fewer rounds for the item
    a._sched.note_fresh({a.key})
    before = a._sched._fresh[a.key]
    call = Call(b.key, held, PushCtx(frozenset({a.key})))
    for _ in range(3):
        a.step(ReplyReceived(call, Ack(MESH, 0, False), net.now))
    assert a.key not in a._sched._fresh or a._sched._fresh[a.key] < before


def test_pingreq_is_relayed_by_the_engine() -> None:
    """Issue 13: the relayed-ping step is the engine's, not each driver's.

    A ``PingReq`` gets no immediate reply: the engine pings the target itself
    (within the probe timeout) and answers ``Ack(ok)`` with the outcome.
    """
    from smegmesh.core.engine import CallFailed
    from smegmesh.core.messages import Ping, PingReq

    net, nodes = mesh_of(3)
    a, b, c = nodes
    outs = b.step(RequestReceived(a.key, PingReq(MESH, c.key, 7), net.now, request_id=42))
    relay = outs[-1]
    assert isinstance(relay, Call) and relay.to == c.key and relay.msg == Ping(MESH, 7)
    assert relay.timeout_ms == LIVE.probe_timeout_ms
    assert not [o for o in outs if isinstance(o, Respond)]
    assert b.step(ReplyReceived(relay, Ack(MESH, 7), net.now)) == [Respond(42, Ack(IN_REPLY, 7))]
    lost = [Respond(42, Ack(IN_REPLY, 7, False))]
    assert b.step(CallFailed(relay, net.now)) == lost
    assert b.step(ReplyReceived(relay, Refusal(MESH), net.now)) == lost


def test_pingreq_for_ourselves_or_a_non_member_is_answered_without_a_call() -> None:
    """Review (nineteenth session): a member's ``PingReq`` sent our relayed ping to
    any key with a record, a departed member's old endpoint included, and to
    ourselves. Now we answer for ourselves (alive) and refuse to relay to a
    key that is not a member, at once and without a call."""
    from smegmesh.core.messages import PingReq

    net, nodes = mesh_of(3)
    a, b, c = nodes
    outs = b.step(RequestReceived(a.key, PingReq(MESH, b.key, 7), net.now, request_id=1))
    assert outs[-1] == Respond(1, Ack(IN_REPLY, 7)) and not [o for o in outs if isinstance(o, Call)]
    outs = b.step(RequestReceived(a.key, PingReq(MESH, bytes(32), 8), net.now, request_id=2))
    assert outs[-1] == Respond(2, Ack(IN_REPLY, 8, False))
    assert not [o for o in outs if isinstance(o, Call)]
    c_left = c.mesh.record(c.key)
    assert c_left is not None
    b.mesh.apply(c_left.evolve(c.identity, net.now + 1, left=True), net.now + 1)
    outs = b.step(RequestReceived(a.key, PingReq(MESH, c.key, 9), net.now, request_id=3))
    assert outs[-1] == Respond(3, Ack(IN_REPLY, 9, False))


def test_indirect_probe_through_the_driver_reaches_the_prober() -> None:
    """End to end over the shared driver: an indirect probe of a live member
    (its direct ping lost) comes back as ``Ack(ok=True)`` through the relay."""
    from smegmesh.core.engine import ProbeCtx
    from smegmesh.core.messages import PingReq

    net, nodes = mesh_of(3)
    net.run_until(net.now + 1000)
    a, b, c = nodes
    got: list[object] = []
    real = a.step

    def spy(inp: Input) -> list[Out]:
        outs = real(inp)
        if isinstance(inp, ReplyReceived) and isinstance(inp.call.msg, PingReq):
            got.append(inp.msg)
        return outs

    a.step = spy  # type: ignore[method-assign]
    net.handle_outs(a, [Call(b.key, PingReq(MESH, c.key, 99), ProbeCtx(c.key, 99))])
    net.run_until(net.now + 100)
    assert got == [Ack(IN_REPLY, 99, True)]


def test_the_loop_network_calls_no_client_as_the_real_one_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client has no control endpoint: nobody can call it (behind NAT). The
    loop network delivered such calls all the same, so a test could pass on
    answers a real client never gives (found by the client-refutation work)."""
    from smegmesh.core.driver import EngineDriver
    from smegmesh.core.engine import Call, PeerPingCtx
    from smegmesh.core.messages import Ping

    net, nodes = mesh_of(2, 1)
    peer, client = nodes[0], nodes[2]
    got: list[str] = []
    call = Call(client.key, Ping(MESH, 0), PeerPingCtx(client.key), timeout_ms=500)
    monkeypatch.setattr(
        EngineDriver, "reply", lambda self, c, *a: got.append("reply") if c is call else None
    )
    monkeypatch.setattr(
        EngineDriver, "failure", lambda self, c, *a: got.append("failed") if c is call else None
    )
    net.handle_outs(peer, [call])
    net.run_until(net.now + 1_000)
    assert got == ["failed"]
