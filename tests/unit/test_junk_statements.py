"""A state keeps an authority statement only if its issuer may make it (core.state_auth).

Found by a review of the authority: AdmissionGate._gate let every statement in
on its signature alone. Any member, a client included, pushed certificates
signed by throwaway keys: they spent a real invitation's uses, and (never
collected: token expiry 2**63-1) filled the cap of certificates so that no
node could be admitted again; void admin statements were kept for ever, each
rebuilding the authority from all (1.3 s a push of 1,000).
"""

from __future__ import annotations

import secrets
import time

import pytest

from smegmesh.core import state_auth
from smegmesh.core.cert import AdminChange, Cert, InviteRevoke, Policy, PolicyChange
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import Bootstrap
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import JoinReply
from smegmesh.core.record import InviteGrant
from smegmesh.core.state import MeshState
from smegmesh.core.state_auth import HeldBack
from smegmesh.core.state_gate import senders_faults
from smegmesh.core.sync import Push
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

BOOT = [Bootstrap("[2001:db8::1]:4000", bytes(32), ident(1).wg_public_key)]
HOUR = 3_600_000
YEAR = 365 * 86_400_000


def _setup(policy: Policy = Policy.PEERS) -> tuple[Mesh, MeshNode, NodeIdentity]:
    """A founder's node holding a client's record (a client may not admit under 'peers')."""
    m = Mesh(policy)
    client = ident(2)
    m.admit(client, may_admit=policy == Policy.MEMBERS)
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    assert founder.mesh.apply(m.record(client), NOW)
    return m, founder, client


def _cert(by: NodeIdentity, mesh_id: str, token_hash: bytes, i: int, expiry: int) -> Cert:
    return Cert.create(
        by,
        mesh_id,
        subject=secrets.token_bytes(32),
        may_admit=False,
        now_ms=NOW + i,
        token_hash=token_hash,
        token_expiry_ms=expiry,
        token_uses=1,
    )


def _throwaway() -> NodeIdentity:
    return NodeIdentity.from_seed(secrets.token_bytes(32))


def _joins(founder: MeshNode, secret: bytes, now: int, i: int = 9) -> bool:
    joiner = member_node(ident(i), founder.mesh_id, MeshState(founder.mesh_id, admission=True))
    reply, _ = founder.handle_request(joiner.key, joiner.join_request(secret, now), now)
    return isinstance(reply, JoinReply)


def test_certificates_of_throwaway_keys_do_not_spend_an_invitation() -> None:
    m, founder, client = _setup()
    tok, _ = founder.invite(NOW + 1, ttl_ms=HOUR, uses=3, bootstrap=BOOT, secret=b"\x07" * 16)
    junk = tuple(_cert(_throwaway(), m.mesh_id, tok.token_hash, i, NOW + HOUR) for i in range(3))
    junk += tuple(_cert(_throwaway(), m.mesh_id, tok.token_hash, i, 2**63 - 1) for i in range(3))
    junk += (_cert(client, m.mesh_id, tok.token_hash, 9, NOW + HOUR),)  # may not admit
    founder.handle_request(client.wg_public_key, Push(m.mesh_id, junk), NOW + 2)
    assert not any(c.key in founder.mesh for c in junk)
    assert tok.token_hash not in founder.mesh.authority.token_subjects
    assert _joins(founder, tok.secret, NOW + 3), "a 3-use invitation was spent by forged entries"


def test_junk_certificates_cannot_fill_the_cap_and_keep_everyone_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_auth, "MAX_AUTH_ITEMS", 64)  # 65,536 in production
    m, founder, client = _setup()
    filler = secrets.token_bytes(16)  # a hash no token has
    junk = tuple(_cert(_throwaway(), m.mesh_id, filler, i, 2**63 - 1) for i in range(40))
    junk += tuple(_cert(_throwaway(), m.mesh_id, filler, i, NOW + YEAR) for i in range(40))
    founder.handle_request(client.wg_public_key, Push(m.mesh_id, junk), NOW + 2)
    assert len(founder.mesh.auth_items()) == 1  # the founding record
    tok, _ = founder.invite(NOW + 3, ttl_ms=HOUR, uses=1, bootstrap=BOOT, secret=b"\x08" * 16)
    assert _joins(founder, tok.secret, NOW + 4)


def test_void_statements_of_a_member_are_not_kept_and_cost_little() -> None:
    m, founder, client = _setup()
    void = [
        AdminChange.create(
            client, m.mesh_id, subject=client.wg_public_key, admin=bool(i % 2), now_ms=NOW + i
        )
        for i in range(400)
    ]
    void += [PolicyChange.create(client, m.mesh_id, policy=Policy.MEMBERS, now_ms=NOW + 1)]
    t0 = time.perf_counter()
    for st in void:
        founder.handle_request(client.wg_public_key, Push(m.mesh_id, (st,)), NOW + 500)
    took = time.perf_counter() - t0
    assert len(founder.mesh.auth_items()) == 1
    assert len(founder.mesh._pending_auth) <= state_auth.PENDING_AUTH
    assert founder.mesh.authority.policy == Policy.PEERS
    assert took < 2.0, f"{took:.2f} s for 401 void statements"


def test_a_member_that_may_admit_holds_its_share_of_statements_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state_auth, "MAX_AUTH_ITEMS", 64)  # a share of 4
    m, founder, peer = _setup(Policy.MEMBERS)
    certs = tuple(_cert(peer, m.mesh_id, secrets.token_bytes(16), i, NOW + HOUR) for i in range(10))
    founder.handle_request(peer.wg_public_key, Push(m.mesh_id, certs), NOW + 20)
    assert sum(c.key in founder.mesh for c in certs) == 4
    tok, _ = founder.invite(NOW + 30, ttl_ms=HOUR, uses=1, bootstrap=BOOT, secret=b"\x09" * 16)
    assert _joins(founder, tok.secret, NOW + 31)  # an admin is not held to a share


def test_an_admins_statement_before_the_one_naming_it_is_held_back_then_taken() -> None:
    m = Mesh(Policy.PEERS)
    second = ident(2)
    m.admit(second)
    promote = AdminChange.create(
        m.founder, m.mesh_id, subject=second.wg_public_key, admin=True, now_ms=m.t + 100
    )
    change = PolicyChange.create(second, m.mesh_id, policy=Policy.ADMINS, now_ms=m.t + 200)
    st = m.state()
    assert st.apply(m.record(second), NOW)
    changed, errors = st.apply_many([change], NOW + 10**6)
    assert not changed and [type(e) for e in errors] == [HeldBack]
    changed, errors = st.apply_many([promote], NOW + 10**6)
    assert not errors and {promote.key, change.key} <= changed
    assert st.authority.policy == Policy.ADMINS


def test_a_certificate_before_its_admitters_record_is_taken_when_the_record_comes() -> None:
    m = Mesh(Policy.PEERS)
    peer = ident(2)
    m.admit(peer, may_admit=True)
    cert = _cert(peer, m.mesh_id, secrets.token_bytes(16), 5000, NOW + HOUR)
    st = m.state()
    _changed, errors = st.apply_many([cert], NOW + 10_000)
    assert [type(e) for e in errors] == [HeldBack] and cert.key not in st
    changed, errors = st.apply_many([m.record(peer)], NOW + 10_000)
    assert not errors and cert.key in changed and cert.key in st
    # in one batch (a join page): statements go first, the certificate is taken after the record
    fresh = m.state()
    changed, errors = fresh.apply_many([cert, m.record(peer)], NOW + 10_000)
    assert not senders_faults(errors) and cert.key in changed and cert.key in fresh


def test_a_members_revocation_counts_only_for_a_hash_of_its_own_record() -> None:
    """Nodes of the previous version revoke their own token by a statement: still taken."""
    m, founder, client = _setup()
    stranger = InviteRevoke.create(
        client, m.mesh_id, token_hash=secrets.token_bytes(16), now_ms=NOW + 1
    )
    founder.handle_request(client.wg_public_key, Push(m.mesh_id, (stranger,)), NOW + 1)
    assert stranger.key not in founder.mesh
    own = secrets.token_bytes(16)
    rec = founder.mesh.record(client.wg_public_key)
    assert rec is not None
    rec = rec.evolve(client, NOW + 2, invites=(InviteGrant(own, NOW + HOUR, 1),))
    revoke = InviteRevoke.create(client, m.mesh_id, token_hash=own, now_ms=NOW + 3)
    founder.handle_request(client.wg_public_key, Push(m.mesh_id, (rec, revoke)), NOW + 3)
    assert revoke.key in founder.mesh
    assert founder.mesh.authority.token_revoked(own, client.wg_public_key)
    # collected once every token it can revoke has expired
    founder.mesh.gc(NOW + YEAR + 2 * HOUR, HOUR)
    assert revoke.key not in founder.mesh


def test_a_saved_state_keeps_every_ledger_entry_whatever_its_order() -> None:
    """More entries than can be held back: certificates are applied after a batch's records."""
    m = Mesh(Policy.MEMBERS)
    peer = ident(2)
    m.admit(peer)
    certs = [
        _cert(peer, m.mesh_id, secrets.token_bytes(16), 5000 + i, NOW + HOUR)
        for i in range(state_auth.PENDING_AUTH + 44)
    ]
    st = MeshState(m.mesh_id, admission=True)
    _changed, errors = st.apply_many([m.founding, *certs, m.record(peer)], NOW + 10_000)
    assert not errors and all(c.key in st for c in certs)
    again = MeshState(m.mesh_id, admission=True)
    assert again.merge(st) and again == st


def test_entries_no_record_vouches_for_are_dropped_as_a_later_replica_refuses_them() -> None:
    """After an eviction with --cascade, or once the records are collected: states stay equal."""
    m = Mesh(Policy.MEMBERS)
    peer, child = ident(2), ident(3)
    m.admit(peer)
    m.admit(child, by=peer)
    cert = _cert(peer, m.mesh_id, secrets.token_bytes(16), 5000, NOW + YEAR)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    st.apply_many([m.record(peer), m.record(child), cert], NOW + 10_000)
    assert cert.key in st
    admin.evict(NOW + 20_000, peer.wg_public_key, cascade=True)
    assert cert.key not in st and not st.is_member(child.wg_public_key)
    later = MeshState(m.mesh_id, admission=True)
    later.apply_many(st.all_items(), NOW + 30_000)
    assert later == st
    # collected: the admitter and the node it admitted left long ago
    m2 = Mesh(Policy.MEMBERS)
    m2.admit(peer)
    cert = _cert(peer, m2.mesh_id, secrets.token_bytes(16), 5000, NOW + YEAR)
    st = m2.state()
    gone = m2.record(peer).evolve(peer, NOW + 6000, left=True)
    st.apply_many([gone, cert], NOW + 10_000)
    assert cert.key in st
    st.gc(NOW + 10 * HOUR, HOUR)
    assert st.get(peer.wg_public_key) is None and cert.key not in st


def test_a_later_replica_takes_every_statement_of_an_admin_dropped_since(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An admin is held to no share: a replica coming after its demotion takes all its acts."""
    monkeypatch.setattr(state_auth, "MAX_AUTH_ITEMS", 64)  # a share of 4
    m = Mesh(Policy.MEMBERS)
    second = ident(2)
    m.admit(second)
    targets = [ident(10 + i) for i in range(6)]
    for t in targets:
        m.admit(t)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    st.apply_many([m.record(n) for n in (second, *targets)], NOW + 10_000)
    admin.set_admin(NOW + 20_000, second.wg_public_key, True)
    other = member_node(second, m.mesh_id, MeshState(m.mesh_id, admission=True))
    other.absorb(st.all_items(), NOW + 21_000)
    for i, t in enumerate(targets):
        other.evict(NOW + 22_000 + i, t.wg_public_key)
    st.apply_many(other.mesh.all_items(), NOW + 30_000)
    admin.set_admin(NOW + 40_000, second.wg_public_key, False)
    later = MeshState(m.mesh_id, admission=True)
    later.apply_many(st.all_items(), NOW + 50_000)
    assert later == st and not any(later.is_member(t.wg_public_key) for t in targets)


def test_gc_of_an_expired_ledger_entry_leaves_no_trace_in_the_authority() -> None:
    """Second read, finding 1: gc dropped an expired certificate and, when it also
    collected a record, rebuilt the authority only if some entry went unvouched,
    so ``token_subjects``/``token_certs`` kept the certificate it had dropped."""
    m = Mesh(Policy.MEMBERS)
    peer, leaver = ident(2), ident(3)
    m.admit(peer)
    m.admit(leaver)
    token = secrets.token_bytes(16)
    cert = _cert(peer, m.mesh_id, token, 5000, NOW + HOUR)
    st = m.state()
    gone = m.record(leaver).evolve(leaver, NOW + 6000, left=True)
    st.apply_many([m.record(peer), gone, cert], NOW + 10_000)
    assert token in st.authority.token_subjects
    st.gc(NOW + 10 * HOUR, HOUR)
    assert cert.key not in st and st.get(leaver.wg_public_key) is None
    assert token not in st.authority.token_subjects
    assert not any(slot[0] == token for slot in st.authority.token_certs)
