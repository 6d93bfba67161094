"""An evicted node learns it was evicted, from a proof only (core.evicted).

Found by a user's sweep of the CLI: the members refused an evicted node's
calls and the eviction, gossiped among them, never reached it, so it showed
the mesh with itself alone in it and issued invitations nobody honoured.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from smegmesh.core.cert import AdminChange, Revocation
from smegmesh.core.engine import Call
from smegmesh.core.evicted import TELL_INTERVAL_MS, eviction_of, eviction_reply
from smegmesh.core.meshnode import MeshNode, NotAllowed
from smegmesh.core.messages import Ping, Refusal
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import NOW, Mesh, each_over_own_state, ident


def _mesh() -> tuple[Mesh, MeshNode, MeshNode, MeshNode]:
    """A founder (the admin), a member A and a member B, each with a state of all three."""
    m = Mesh()
    admin, a, b = each_over_own_state(m, [ident(2), ident(3)])
    return m, admin, a, b


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


# Review: an eviction by an admin evicted before is void in the mesh; the node
# believed it for good, though it learnt the admin's eviction a moment later.
def test_an_eviction_by_an_admin_evicted_before_is_dropped_once_the_node_knows() -> None:
    m, admin, x, b = _mesh()
    made = AdminChange.create(m.founder, m.mesh_id, subject=x.key, admin=True, now_ms=NOW + 1_000)
    for n in (admin, x, b):
        n.mesh.apply_many([made], NOW + 1_000)
    assert b.mesh.authority.is_admin(x.key)
    admin.evict(NOW + 2_000, x.key)  # b does not know yet
    fake = Revocation.create(
        x.identity, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 3_000
    )  # void: x was no admin at its time
    b.evicted = eviction_of(b.mesh, b.key, Push(m.mesh_id, (fake,)))
    assert b.evicted == fake  # by b's view, as any statement of x it holds
    assert not b.may_admit(NOW + 3_001)
    # b learns of x's eviction (gossip): x's later statements are void
    b.mesh.apply_many(admin.mesh.authority.revoked[x.key], NOW + 4_000)
    assert not b.mesh.authority.was_admin_at(x.key, fake.issued_ms)
    assert b.evicted is None
    assert b.may_admit(NOW + 4_001)


# Review: the Push is not bounded in bytes (a revocation keeps up to 4,096 keys):
# every call of the evicted node (a probe, ~50 B) got up to ~0.5 MB. Now once per
# caller per TELL_INTERVAL_MS (a Refusal between), the smallest first.
def test_the_push_to_an_evicted_caller_is_bounded_per_caller() -> None:
    _m, admin, _a, b = _mesh()
    admin.evict(NOW + 5_000, b.key)
    t = NOW + 6_000
    first, _ = admin.handle_request(b.key, Ping(admin.mesh_id, 1), t)
    assert isinstance(first, Push)
    again, _ = admin.handle_request(b.key, Ping(admin.mesh_id, 2), t + 100)
    assert isinstance(again, Refusal)  # not a Push to each of its calls
    later, _ = admin.handle_request(b.key, Ping(admin.mesh_id, 3), t + TELL_INTERVAL_MS)
    assert isinstance(later, Push)
    stranger = ident(9).wg_public_key
    assert isinstance(admin.handle_request(stranger, Ping(admin.mesh_id, 4), t)[0], Refusal)


def test_a_clock_stepped_back_does_not_hold_an_evicted_callers_answer_back() -> None:
    """The wall clock set back an hour: the next Push to an evicted caller is due a
    TELL_INTERVAL_MS after the last, on the new clock (not an hour later)."""
    _m, admin, _a, b = _mesh()
    admin.evict(NOW + 5_000, b.key)
    t = NOW + 6_000
    assert isinstance(admin.handle_request(b.key, Ping(admin.mesh_id, 1), t)[0], Push)
    admin.clock_stepped(-3_600_000)
    t -= 3_600_000
    later, _ = admin.handle_request(b.key, Ping(admin.mesh_id, 2), t + TELL_INTERVAL_MS)
    assert isinstance(later, Push)
