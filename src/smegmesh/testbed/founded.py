"""A founded mesh in memory, for tests and the fuzz corpus.

:class:`Mesh` holds a founder's founding record and admits nodes with real
certificates (chains of any depth); :func:`member_node` makes a
:class:`~smegmesh.core.meshnode.MeshNode` of one identity over a given state.
Nothing here talks to a network: the records and nodes are the core's own.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from smegmesh.core.cert import AuthItem, Cert, Founding, Policy
from smegmesh.core.engine import Call
from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.messages import JoinReply, Refusal
from smegmesh.core.record import NodeRecord, Prune, Role
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode

__all__ = [
    "NOW",
    "Mesh",
    "drive",
    "each_over_own_state",
    "ident",
    "join",
    "member_node",
    "settled",
]

#: The time (ms) a :class:`Mesh` is founded at unless told otherwise.
NOW = 1_700_000_000_000


def ident(i: int) -> NodeIdentity:
    """The identity of seed byte ``i`` (the same keys on every run)."""
    return NodeIdentity.from_seed(bytes([i]) * 32)


class Mesh:
    """A founder and helpers to admit nodes with real certificates."""

    def __init__(
        self,
        policy: Policy = Policy.PEERS,
        name: str = "amber-fox-ash",
        *,
        founder: NodeIdentity | None = None,
        now: int = NOW,
    ) -> None:
        self.founder = founder or ident(1)
        self.founding = Founding.create(self.founder, name, now_ms=now, policy=policy)
        self.mesh_id = self.founding.mesh_id
        self.chains: dict[bytes, tuple[Cert, ...]] = {self.founder.wg_public_key: ()}
        self.t = now

    def state(self) -> MeshState:
        """A state holding the founding record alone (admission on)."""
        st = MeshState(self.mesh_id, admission=True)
        assert st.apply(self.founding, NOW)
        return st

    def admit(
        self, who: NodeIdentity, by: NodeIdentity | None = None, *, may_admit: bool = True
    ) -> tuple[Cert, ...]:
        """``who``'s chain, certified by ``by`` (the founder by default) a second later."""
        by = by or self.founder
        self.t += 1000
        cert = Cert.create(
            by, self.mesh_id, subject=who.wg_public_key, may_admit=may_admit, now_ms=self.t
        )
        chain = (*self.chains[by.wg_public_key], cert)
        self.chains[who.wg_public_key] = chain
        return chain

    def record(self, who: NodeIdentity, version: int | None = None, **kw: object) -> NodeRecord:
        """``who``'s record with its chain (version: a ms after the last admission)."""
        v = version if version is not None else self.t + 1
        return NodeRecord.create(
            who,
            self.mesh_id,
            version=v,
            now_ms=min(v, NOW + 10**9),
            chain=self.chains.get(who.wg_public_key, ()),
            **kw,  # type: ignore[arg-type]
        )

    def prune(self, by: NodeIdentity, target: NodeRecord, now: int) -> Prune:
        """``by``'s prune of ``target`` (that very record), with ``by``'s chain."""
        return Prune.create(
            by,
            self.mesh_id,
            now_ms=now,
            target_record=target,
            by_chain=self.chains[by.wg_public_key],
        )


def member_node(
    identity: NodeIdentity,
    mesh_id: str,
    st: MeshState,
    *,
    control_endpoint: str = "[2001:db8::1]:4000",
) -> MeshNode:
    """A peer ``MeshNode`` of ``identity`` over ``st``, default parameters, seed 1."""
    return MeshNode(
        identity,
        mesh_id,
        MeshSettings(Role.PEER, "[2001:db8::1]:51820", control_endpoint, bytes(32)),
        GossipParams(),
        LivenessParams(),
        random.Random(1),
        st,
    )


def join(member: MeshNode, joiner: MeshNode, secret: bytes, now: int) -> bool:
    """``joiner`` joins through ``member`` with ``secret``, every message through
    the wire codec; once admitted, it pushes its record back. False if refused."""
    req = decode(encode(joiner.join_request(secret, now)))
    reply, _outs = member.handle_request(joiner.key, req, now)
    if isinstance(reply, Refusal):
        return False
    assert isinstance(reply, JoinReply)
    reply = decode(encode(reply))
    joiner.absorb(reply.items, now, reply.chain)
    own = tuple(joiner.mesh.items_for([joiner.key]))
    member.handle_request(joiner.key, Push(member.mesh_id, own), now)
    return True


def settled(*, after_ms: int = 10_000) -> tuple[Mesh, MeshState, list[NodeRecord], int]:
    """A founded mesh whose ten members (identities 2-11) all hold records
    with control endpoints, a state holding them, and a time ``after_ms`` past
    the last admission."""
    m = Mesh()
    ids = [ident(i) for i in range(2, 12)]
    for i in ids:
        m.admit(i)
    recs = [
        m.record(i, control_endpoint=f"[2001:db8::{n + 2:x}]:4000", tls_fp=bytes(32))
        for n, i in enumerate(ids)
    ]
    now = m.t + after_ms
    st = MeshState(m.mesh_id, admission=True)
    assert st.apply(m.founding, now)
    assert not st.apply_many(recs, now)[1]
    return m, st, recs, now


def each_over_own_state(
    m: Mesh,
    members: list[NodeIdentity],
    statements: tuple[AuthItem, ...] = (),
    now: int = NOW,
    *,
    by: Sequence[NodeIdentity | None] = (),
) -> list[MeshNode]:
    """The founder and ``members`` (admitted here by ``by``, one each, the founder
    for None or past its end), each a started ``MeshNode`` over a state of its own
    holding all their records (with control endpoints) and ``statements``: nodes
    that can call each other."""
    for i, who in enumerate(members):
        m.admit(who, by[i] if i < len(by) else None)
    everyone = [m.founder, *members]
    recs = [
        m.record(who, control_endpoint=f"[2001:db8::{n + 1:x}]:4000", tls_fp=bytes(32))
        for n, who in enumerate(everyone)
    ]
    out = []
    for who in everyone:
        st = m.state()
        assert not st.apply_many([*recs, *statements], now)[1]
        node = member_node(who, m.mesh_id, st)
        node.start(now)
        out.append(node)
    return out


def drive(node: MeshNode, others: Iterable[MeshNode], t0: int, t1: int) -> list[Call]:
    """``node`` run from ``t0`` to ``t1`` (ms, simulated) at its own deadlines, each of
    its calls answered at once by the one of ``others`` it names, every message
    through the wire codec (a call to another key, or one relayed on, fails).
    Returns the calls it made, in order. The others are not run."""
    by_key = {o.key: o for o in others}
    sent: list[Call] = []
    t = t0
    while t < t1:
        todo = list(node.tick(t))
        while todo:
            o = todo.pop(0)
            if not isinstance(o, Call):
                continue
            sent.append(o)
            peer = by_key.get(o.to)
            reply = None
            if peer is not None:
                reply, _ = peer.handle_request(node.key, decode(encode(o.msg)), t)
            if reply is None:
                todo.extend(node.handle_failure(o.to, o.ctx, t))
            else:
                todo.extend(node.handle_reply(o.to, o.ctx, decode(encode(reply)), t))
        due = node.next_deadline()
        t = max(t + 1, due if due is not None else t + 1_000)
    return sent
