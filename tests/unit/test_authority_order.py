"""Replicas agree on who is a member whatever order the statements and records came in.

Found by a review of the authority: a state purged the records a statement
made invalid only when the statement changed the founding record or the *set*
of evicted keys. A policy change, a second eviction of an evicted node with
``--cascade``, or an admin change that voids another's promotion left the
records they invalidate on every replica that held them, while a replica that
got the statement first refused them: members disagreed for good.
"""

from __future__ import annotations

from collections.abc import Sequence

from smegmesh.core.cert import AdminChange, Policy, PolicyChange, Revocation
from smegmesh.core.state import Item, MeshState
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

LATER = NOW + 10**6


def _state(m: Mesh, *batches: Sequence[Item]) -> MeshState:
    st = m.state()
    for b in batches:
        st.apply_many(b, LATER)
    return st


def test_a_second_eviction_with_cascade_removes_the_kept_children_everywhere() -> None:
    m = Mesh(Policy.MEMBERS)
    bad, child = ident(2), ident(3)
    m.admit(bad)
    m.admit(child, by=bad)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    for n in (bad, child):
        assert st.apply(m.record(n), NOW)
    admin.evict(NOW + 5000, bad.wg_public_key)  # plain: the child is kept
    assert st.is_member(child.wg_public_key)
    admin.evict(NOW + 6000, bad.wg_public_key, cascade=True)  # then with --cascade
    fresh = MeshState(m.mesh_id, admission=True)  # a replica that gets it all at once
    fresh.apply_many(st.all_items(), NOW + 7000)
    assert not fresh.is_member(child.wg_public_key)
    assert not st.is_member(child.wg_public_key), "evict --cascade after a plain evict kept it"


def test_two_admins_evicting_one_node_concurrently_give_the_same_members_in_any_order() -> None:
    m = Mesh(Policy.MEMBERS)
    second, bad, child = ident(5), ident(2), ident(3)
    m.admit(second)
    m.admit(bad)
    m.admit(child, by=bad)
    promote = AdminChange.create(
        m.founder, m.mesh_id, subject=second.wg_public_key, admin=True, now_ms=m.t + 100
    )
    plain = Revocation.create(
        m.founder,
        m.mesh_id,
        target=bad.wg_public_key,
        cascade=False,
        keep=(child.wg_public_key,),
        now_ms=m.t + 1000,
    )
    cascade = Revocation.create(
        second, m.mesh_id, target=bad.wg_public_key, cascade=True, now_ms=m.t + 1001
    )
    recs = [m.record(n) for n in (second, bad, child)]
    a = _state(m, [promote, *recs], [plain], [cascade])
    b = _state(m, [promote, *recs], [cascade], [plain])
    assert not b.is_member(child.wg_public_key)
    assert not a.is_member(child.wg_public_key), "plain then cascade kept the child"


def test_a_policy_change_gives_the_same_members_in_any_order() -> None:
    m = Mesh(Policy.PEERS)
    peer, late = ident(2), ident(3)
    m.admit(peer, may_admit=True)
    change = PolicyChange.create(m.founder, m.mesh_id, policy=Policy.ADMINS, now_ms=m.t + 500)
    m.admit(late, by=peer)  # after the change: the peer had not heard of it yet
    recs = [m.record(peer), m.record(late)]
    a = _state(m, [change, *recs])  # the change first
    b = _state(m, recs, [change])  # the records first
    assert a.authority.policy == b.authority.policy == Policy.ADMINS
    assert not a.is_member(late.wg_public_key)
    assert not b.is_member(late.wg_public_key), "the records-first replica kept it"
    assert a.is_member(peer.wg_public_key) and b.is_member(peer.wg_public_key)


def test_a_demotion_that_voids_a_promotion_gives_the_same_members_in_any_order() -> None:
    """An admin dropped before it promoted another: that one never was an admin."""
    m = Mesh(Policy.ADMINS)
    second, third, node = ident(2), ident(3), ident(4)
    m.admit(second, may_admit=False)
    m.admit(third, may_admit=False)
    t = m.t
    promote = AdminChange.create(
        m.founder, m.mesh_id, subject=second.wg_public_key, admin=True, now_ms=t + 100
    )
    demote = AdminChange.create(
        m.founder, m.mesh_id, subject=second.wg_public_key, admin=False, now_ms=t + 150
    )
    promote_third = AdminChange.create(
        second, m.mesh_id, subject=third.wg_public_key, admin=True, now_ms=t + 200
    )
    m.admit(node, by=third, may_admit=False)  # 'admins': valid only if third is an admin
    recs = [m.record(n) for n in (second, third, node)]
    a = _state(m, [promote, promote_third, *recs], [demote])
    b = _state(m, [promote, promote_third, demote, *recs])
    assert not b.is_member(node.wg_public_key)
    assert not a.is_member(node.wg_public_key), "the demotion-last replica kept it"
