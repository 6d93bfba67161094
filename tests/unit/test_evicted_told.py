"""An evicted node learns it was evicted, from a proof only (core.evicted).

Found by a user's sweep of the CLI: the members refused an evicted node's
calls and the eviction, gossiped among them, never reached it, so it showed
the mesh with itself alone in it and issued invitations nobody honoured.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from smegmesh.core.cert import Revocation
from smegmesh.core.engine import Call
from smegmesh.core.evicted import eviction_of, eviction_reply
from smegmesh.core.meshnode import MeshNode, NotAllowed
from smegmesh.core.messages import Refusal
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node


def _mesh() -> tuple[Mesh, MeshNode, MeshNode, MeshNode]:
    """A founder (the admin), a member A and a member B, each with a state of all three."""
    m = Mesh()
    a, b = ident(2), ident(3)
    m.admit(a)
    m.admit(b)
    nodes = []
    for who in (m.founder, a, b):
        st = m.state()
        for n, r in enumerate((m.founder, a, b)):
            ep = f"[2001:db8::{n + 1}]:4000"
            st.apply(m.record(r, control_endpoint=ep, tls_fp=bytes(32)), NOW)
        n = member_node(who, m.mesh_id, st)
        n.start(NOW)
        nodes.append(n)
    return m, nodes[0], nodes[1], nodes[2]


def _a_call(n: MeshNode, to: bytes, t0: int) -> Call:
    """A call ``n`` makes to ``to`` within a minute of ``t0`` (a probe, a pull...)."""
    for t in range(t0, t0 + 60_000, 50):
        for o in n.tick(t):
            if isinstance(o, Call) and o.to == to:
                return o
    raise AssertionError("no call")


def test_an_evicted_node_is_shown_its_eviction_and_believes_it() -> None:
    _m, admin, _a, b = _mesh()
    admin.evict(NOW + 5_000, b.key)
    assert not admin.mesh.is_member(b.key)
    call = _a_call(b, admin.key, NOW + 5_001)
    reply, _ = admin.handle_request(b.key, decode(encode(call.msg)), NOW + 6_000)
    assert isinstance(reply, Push)  # in place of the Refusal
    reply = decode(encode(reply))  # as on the wire
    assert b.evicted is None
    b.handle_reply(call.to, call.ctx, reply, NOW + 6_001)
    assert isinstance(b.evicted, Revocation)
    assert b.evicted.target == b.key and b.evicted.issuer == admin.key
    assert b.mesh.record(b.key) is not None  # not merged: its own record stays
    # it invites nobody (no member would admit with its token) and announces itself no more
    with pytest.raises(NotAllowed, match="evicted"):
        b.invite(NOW + 6_002, ttl_ms=60_000, uses=1, bootstrap=(), secret=bytes(16))
    assert not b.may_admit(NOW + 6_002)
    again = b.handle_reply(call.to, call.ctx, reply, NOW + 20_000)
    assert not [o for o in again if isinstance(o, Call)]
    for t in range(NOW + 6_002, NOW + 70_000, 100):  # and it goes on without error
        b.tick(t)


def test_a_member_answering_for_an_admin_cannot_make_a_node_believe_it_was_evicted() -> None:
    m, admin, a, b = _mesh()
    forged = Revocation.create(
        a.identity, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 5_000
    )  # a member's own "eviction": not an admin's
    assert eviction_of(b.mesh, b.key, Push(m.mesh_id, (forged,))) is None
    admin.evict(NOW + 5_000, b.key)
    real = admin.mesh.authority.revoked[b.key][0]
    bad_sig = replace(real, signature=bytes(64))
    assert eviction_of(b.mesh, b.key, Push(m.mesh_id, (bad_sig,))) is None
    # an eviction of another node, or of another mesh, says nothing of ours
    assert eviction_of(a.mesh, a.key, Push(m.mesh_id, (real,))) is None
    assert eviction_of(b.mesh, b.key, Push("other-mesh-x", (real,))) is None
    assert eviction_of(b.mesh, b.key, Push(m.mesh_id, (real,))) == real
    # a member's ordinary refusal is a refusal
    call = _a_call(b, a.key, NOW + 5_001)
    b.handle_reply(call.to, call.ctx, Refusal(m.mesh_id), NOW + 6_000)
    assert b.evicted is None


def test_only_an_evicted_caller_is_shown_evictions() -> None:
    m, admin, _a, b = _mesh()
    stranger = ident(9).wg_public_key
    assert eviction_reply(admin.mesh, stranger) is None  # a stranger: a Refusal, as ever
    assert eviction_reply(admin.mesh, b.key) is None  # a member
    admin.evict(NOW + 5_000, b.key)
    told = eviction_reply(admin.mesh, b.key)
    assert told is not None and [r.target for r in told.items] == [b.key]
    assert eviction_reply(MeshState(m.mesh_id), b.key) is None  # no authority: nothing
