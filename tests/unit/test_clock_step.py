"""A step of the wall clock (NTP/chrony makestep, a VM resumed, fake-hwclock at
boot) moves the engine's own timers with it (``engine.ClockStepped``); what it
signs stays on the wall clock. Review of the liveness code: stepped back an
hour, a node sent no probe, no gossip round and no pull for the hour (its
deadlines lay an hour ahead) while it still answered, so nobody noticed;
stepped forward 10 s, the member being probed was suspect from before the
step and dead at the next tick, 150 ms later, before its indirect probes could
answer, and every watched client was declared dead. The daemon finds steps:
``tests/unit/test_clock_step_daemon.py``."""

from __future__ import annotations

import random

from smegmesh.core.engine import Call, ClockStepped, MeshSettings, PeerPingCtx
from smegmesh.core.gossip import GossipParams
from smegmesh.core.liveness import Dead, FailureDetector, LivenessParams
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import Ack, Ping, PingReq
from smegmesh.core.record import Role
from smegmesh.core.state import MeshState
from smegmesh.core.sync import SyncStart
from smegmesh.testbed.founded import Mesh, ident, member_node, settled

HOUR = 3_600_000


def _state() -> tuple[Mesh, MeshState, int]:
    m, st, _recs, now = settled()
    return m, st, now


def _node() -> tuple[MeshNode, MeshState, int]:
    m, st, now = _state()
    return member_node(ident(2), m.mesh_id, st), st, now


def _run(
    node: MeshNode, start: int, ms: int, step: int = 100, shift: int = 0, dead: bytes = b""
) -> list[object]:
    """Ticks ``step`` apart for ``ms`` from ``start`` (+ ``shift``: the clock's
    step); every probe is acked 20 ms later, but ``dead``'s."""
    outs: list[object] = []
    acks: list[tuple[int, Call]] = []
    for t in range(start, start + ms, step):
        for at, c in [a for a in acks if a[0] <= t]:
            acks.remove((at, c))
            assert isinstance(c.msg, Ping | PingReq)
            ack = Ack(node.mesh_id, c.msg.probe_id)
            outs += node.handle_reply(c.to, c.ctx, ack, at + shift)
        got = node.tick(t + shift)
        acks += [
            (t + 20, o)
            for o in got
            if isinstance(o, Call) and isinstance(o.msg, Ping) and o.to != dead
        ]
        outs += got
    return outs


def _calls(outs: list[object], kind: type) -> int:
    return sum(1 for o in outs if isinstance(o, Call) and isinstance(o.msg, kind))


def test_a_clock_stepped_back_does_not_stop_probes_and_gossip() -> None:
    node, _st, now = _node()
    before = _run(node, now, 10_000)
    assert _calls(before, Ping) >= 8  # one probe a second
    # the wall clock is stepped back by an hour; 30 s of real time follow
    assert node.step(ClockStepped(-HOUR)) == []
    back = now + 10_000 - HOUR
    assert node.next_deadline() is not None and node.next_deadline() <= back + 1_000  # type: ignore[operator]
    after = _run(node, back, 30_000)
    assert _calls(after, Ping) >= 20, f"{_calls(after, Ping)} probes in 30 s"
    assert _calls(after, SyncStart) >= 5, f"{_calls(after, SyncStart)} pulls in 30 s"


def test_a_clock_stepped_forward_does_not_prune_the_member_being_probed() -> None:
    node, st, now = _node()
    t = now
    target = None
    while target is None:  # until a probe is in flight (no ack will come yet)
        for o in node.tick(t):
            if isinstance(o, Call) and isinstance(o.msg, Ping):
                target = o.to
        t += 10
    # 50 ms later the wall clock is stepped 10 s forward; ticks 100 ms apart follow
    node.step(ClockStepped(10_000))
    jumped = t + 50 + 10_000
    outs = node.tick(jumped) + node.tick(jumped + 100)
    assert _calls(outs, PingReq) == 0  # 160 ms of the probe's 400 ms timeout passed
    assert target not in node.suspects
    assert st.live_record(target) is not None, "live member pruned 150 ms after a clock step"
    # the probe still times out as it would have: indirect probes at 400 ms
    outs = [o for u in range(jumped + 110, jumped + 500, 10) for o in node.tick(u)]
    assert _calls(outs, PingReq) > 0 and st.live_record(target) is not None


def test_a_clock_stepped_forward_does_not_end_the_watched_clients() -> None:
    p = LivenessParams()
    fd = FailureDetector(b"\x00" * 32, p, random.Random(1))
    clients = [bytes([i]) * 32 for i in range(1, 4)]
    for c in clients:
        fd.heard_from(c, 0)
    assert not [a for a in fd.tick(1_000, [], watched_clients=clients) if isinstance(a, Dead)]
    for c in clients:
        fd.heard_from(c, 1_000)
    fd.clock_stepped(10_000)
    acts = fd.tick(11_100, [], watched_clients=clients)
    assert not [a for a in acts if isinstance(a, Dead)], "clients heard 100 ms ago declared dead"
    # their silence still counts: client_timeout after they were last heard
    acts = fd.tick(11_000 + p.client_timeout_ms - 10, [], watched_clients=clients)
    assert not [a for a in acts if isinstance(a, Dead)]
    acts = fd.tick(11_000 + p.client_timeout_ms, [], watched_clients=clients)
    assert sorted(a.target for a in acts if isinstance(a, Dead)) == clients


def test_a_client_stepped_back_keeps_pinging_its_peer() -> None:
    """Its peer declares it dead after client_timeout without its pings."""
    m, st, now = _state()
    me = ident(20)
    m.admit(me)
    peer = ident(3).wg_public_key
    own = m.record(me, role=Role.CLIENT, assigned_peer=peer, tls_fp=bytes(32))
    assert st.apply(own, now)
    client = MeshNode(
        me,
        m.mesh_id,
        MeshSettings(Role.CLIENT, tls_fp=bytes(32)),
        GossipParams(),
        LivenessParams(),
        random.Random(1),
        st,
    )
    client.start(now)
    assert client.my_peer() is not None

    def pings(start: int, ms: int) -> int:
        n = 0
        for t in range(start, start + ms, 100):
            for o in client.tick(t):
                if isinstance(o, Call) and isinstance(o.ctx, PeerPingCtx):
                    n += 1
                    client.handle_reply(o.to, o.ctx, Ack(m.mesh_id, 0), t + 20)
        return n

    assert pings(now, 5_000) >= 4
    client.step(ClockStepped(-HOUR))
    assert pings(now + 5_000 - HOUR, 10_000) >= 9


def _sent(outs: list[object]) -> list[tuple[str, bytes]]:
    return [(type(o.msg).__name__, o.to) for o in outs if isinstance(o, Call)]


def test_a_node_told_of_a_step_does_what_it_would_have_done_without_it() -> None:
    """Every timer moves with the step: the same calls to the same members,
    a member found dead as soon (its prune dated by the new clock). Steps
    within the clock skew a state takes (MAX_CLOCK_SKEW_MS): set back further,
    this node's clock is behind the members' records, and its prunes of them
    are "from the future" (as anyone's are whose clock is that far behind)."""
    dead = ident(7).wg_public_key
    runs = []
    for step in (0, -300_000, -1_000, 10_000, 60_000):
        node, st, now = _node()
        first = _sent(_run(node, now, 7_000, 50, dead=dead))
        node.step(ClockStepped(step))
        then = _sent(_run(node, now + 7_000, 20_000, 50, step, dead))
        assert st.live_record(dead) is None
        runs.append((first, then, sorted(r.wg_key for r in st.live_records())))
    assert all(r == runs[0] for r in runs[1:])
    assert ("Push", dead) not in runs[0][1] and any(k == "Push" for k, _ in runs[0][1])
