"""Mesh authority (issue 11): each finding of the security review, on the real core.

Every test builds a mesh with a founding record (``admission=True``, as the
daemon does) and plays the attack of one finding; where it helps, the same
attack is shown succeeding on a state without an authority (how the code
behaved before).
"""

from __future__ import annotations

import secrets

import pytest

from smegmesh.core.authority import Authority, alias_owners
from smegmesh.core.cert import (
    AdminChange,
    AliasReserve,
    Cert,
    Founding,
    Policy,
    Revocation,
    founding_name,
)
from smegmesh.core.certwire import auth_from_obj, auth_to_obj
from smegmesh.core.engine import Call
from smegmesh.core.invite import Bootstrap, Token
from smegmesh.core.meshnode import MeshNode, NotAllowed
from smegmesh.core.messages import JoinReply, Refusal
from smegmesh.core.record import (
    MembershipProof,
    NodeRecord,
    Prune,
    RecordError,
    Role,
    RouteAdv,
)
from smegmesh.core.routing import compute_routes
from smegmesh.core.state import MAX_CLOCK_SKEW_MS, MeshState
from smegmesh.core.state_auth import HeldBack
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import NOW, Mesh, ident, join, member_node


def test_mesh_id_is_self_certifying() -> None:
    m = Mesh()
    assert founding_name(m.mesh_id) == "amber-fox-ash"
    assert m.founding.mesh_id == m.mesh_id
    # A founding record for another key cannot claim this mesh id.
    other = Founding.create(ident(9), "amber-fox-ash", now_ms=NOW)
    assert other.mesh_id != m.mesh_id
    st = m.state()
    with pytest.raises(RecordError):
        st.apply(other, NOW)
    # Statements survive the wire.
    assert auth_from_obj(auth_to_obj(m.founding)) == m.founding


# --------------------------------------------------------------------------- finding 1


def test_forged_future_prune_is_dropped_and_refutation_wins() -> None:
    """Finding 1: a prune 'from the future', or by a non-member, evicted everyone."""
    m = Mesh()
    victim, attacker = ident(2), ident(3)
    m.admit(victim)
    m.admit(attacker)
    st = m.state()
    vrec = m.record(victim)
    assert st.apply(m.record(attacker), NOW)
    assert st.apply(vrec, NOW)
    future = NOW + MAX_CLOCK_SKEW_MS - 1
    # Before: a state without an authority took the forged prune, and the
    # victim's refutation (max(version + 1, now)) stayed below it.
    legacy = MeshState(m.mesh_id)
    legacy.apply(vrec, NOW)
    forged = Prune.create(
        attacker, m.mesh_id, target=victim.wg_public_key, target_version=future, now_ms=NOW
    )
    assert legacy.apply(forged, NOW)
    refuted = vrec.evolve(victim, NOW + 1)
    legacy.apply(refuted, NOW + 1)
    assert not legacy.is_live(victim.wg_public_key)
    # Now: a prune must carry the target's own signed record at that version...
    with pytest.raises(RecordError, match="target_record"):
        st.apply(forged, NOW)
    # ...which nobody but the victim can sign (a re-signed copy fails).
    fake = NodeRecord.create(
        attacker, m.mesh_id, version=future, now_ms=NOW, chain=m.chains[attacker.wg_public_key]
    )
    with pytest.raises(RecordError):
        st.apply(
            Prune.create(
                attacker,
                m.mesh_id,
                now_ms=NOW,
                target=victim.wg_public_key,
                target_version=future,
                target_record=fake,
                by_chain=m.chains[attacker.wg_public_key],
            ),
            NOW,
        )
    # A genuine prune (the version the pruner saw) is accepted...
    honest = Prune.create(
        attacker,
        m.mesh_id,
        now_ms=NOW,
        target_record=vrec,
        by_chain=m.chains[attacker.wg_public_key],
    )
    assert st.apply(honest, NOW)
    assert not st.is_live(victim.wg_public_key)
    # ...and the live victim's refutation always wins.
    assert st.apply(vrec.evolve(victim, NOW), NOW)
    assert st.is_live(victim.wg_public_key)


def test_prune_by_non_member_is_dropped() -> None:
    m = Mesh()
    victim, stranger = ident(2), ident(4)
    m.admit(victim)
    st = m.state()
    vrec = m.record(victim)
    st.apply(vrec, NOW)
    p = Prune.create(stranger, m.mesh_id, now_ms=NOW, target_record=vrec)
    with pytest.raises(RecordError, match="by_chain"):
        st.apply(p, NOW)
    assert st.is_live(victim.wg_public_key)


# --------------------------------------------------------------------------- finding 2


def test_records_need_an_admission_proof() -> None:
    """Finding 2: a member injected fresh identities that every node configured."""
    m = Mesh()
    member = ident(2)
    m.admit(member)
    st = m.state()
    st.apply(m.record(member), NOW)
    sock = ident(5)
    # Self-signed only: refused.
    with pytest.raises(RecordError, match="no admission proof"):
        st.apply(m.record(sock), NOW)
    # A cert from a node that is not in the chain from the founder: refused.
    rogue = Cert.create(ident(6), m.mesh_id, subject=sock.wg_public_key, may_admit=True, now_ms=NOW)
    with pytest.raises(RecordError, match="broken"):
        st.apply(NodeRecord.create(sock, m.mesh_id, version=NOW, now_ms=NOW, chain=(rogue,)), NOW)
    # A chain of another node: refused.
    with pytest.raises(RecordError, match="another node"):
        st.apply(
            NodeRecord.create(
                sock, m.mesh_id, version=NOW, now_ms=NOW, chain=m.chains[member.wg_public_key]
            ),
            NOW,
        )
    assert sock.wg_public_key not in st
    # Departed nodes are not members (and cannot call in).
    st.apply(m.record(member, left=True, version=m.t + 100), m.t + 100)
    assert not st.is_member(member.wg_public_key)


def test_policy_peers_clients_cannot_admit() -> None:
    m = Mesh(Policy.PEERS)
    client, puppet = ident(2), ident(3)
    m.admit(client, may_admit=False)  # what an admitter writes for a client under 'peers'
    m.admit(puppet, by=client)
    st = m.state()
    st.apply(m.record(client), NOW)
    with pytest.raises(RecordError, match="may not admit"):
        st.apply(m.record(puppet), NOW)
    auth = st.authority
    assert auth.may_admit_by_policy(True) and not auth.may_admit_by_policy(False)
    assert not Authority.build(m.mesh_id, [Founding.create(m.founder, "x", now_ms=NOW)]).founding


# --------------------------------------------------------------------------- finding 3


def test_alias_stays_with_the_first_admitted_node() -> None:
    """Finding 3: a ground key took db1.MESH.smeg. from its owner."""
    m = Mesh()
    owner = ident(2)
    m.admit(owner)
    # Grind: find a later-admitted key that wins the old rendezvous rule.
    thief = None
    for i in range(10, 200):
        cand = ident(i)
        old = alias_owners(
            [(owner.wg_public_key, "db1", ()), (cand.wg_public_key, "db1", ())], None
        )
        if old["db1"] == cand.wg_public_key:
            thief = cand
            break
    assert thief is not None, "no key found that wins the old rule"
    m.admit(thief)
    st = m.state()
    st.apply(m.record(owner, alias="db1"), NOW)
    st.apply(m.record(thief, alias="db1"), NOW)
    claims = [(r.wg_key, r.alias, r.chain) for r in st.live_records()]
    assert alias_owners(claims, st.authority)["db1"] == owner.wg_public_key
    # An admin reservation gives the name to its holder.
    res = AliasReserve.create(
        m.founder, m.mesh_id, alias="db1", holder=thief.wg_public_key, now_ms=NOW + 50_000
    )
    assert st.apply(res, NOW + 50_000)
    assert alias_owners(claims, st.authority)["db1"] == thief.wg_public_key


# --------------------------------------------------------------------------- finding 4


def test_route_to_another_mesh_needs_membership_proof() -> None:
    """Finding 4: a member advertising another mesh's /64 with a shorter path took it."""
    here, there = Mesh(name="here-mesh-a"), Mesh(name="there-mesh-b")
    me, bridge, liar = ident(2), ident(3), ident(4)
    for n in (me, bridge, liar):
        here.admit(n)
    # The real bridge is a member of 'there' and proves it.
    there.founder = bridge
    there.founding = Founding.create(bridge, "there-mesh-b", now_ms=NOW)
    there.mesh_id = there.founding.mesh_id
    there.chains = {bridge.wg_public_key: ()}
    from smegmesh.core.addressing import mesh_prefix

    dest = str(mesh_prefix(there.mesh_id))
    proof = MembershipProof(there.founding, ())
    real = here.record(
        bridge, role=Role.PEER, routes=(RouteAdv(dest, (there.mesh_id,)),), proofs=(proof,)
    )
    fake = here.record(liar, role=Role.PEER, routes=(RouteAdv(dest, (there.mesh_id,)),))
    st = here.state()
    assert st.apply(real, NOW)
    assert st.apply(fake, NOW)  # its other content is fine; its advert is ignored
    res = compute_routes(
        me.wg_public_key,
        {here.mesh_id: st.live_records()},
        advertise_routes=False,
        advertise_defaults=False,
        accept_defaults=False,
    )
    [entry] = [e for e in res.table if e.destination == dest]
    assert entry.gateway == bridge.wg_public_key and entry.alternatives == 0
    # A proof for a mesh the liar is not in does not verify.
    bad = MembershipProof(there.founding, (here.chains[liar.wg_public_key][-1],))
    with pytest.raises(RecordError, match="proofs"):
        st.apply(
            here.record(
                liar,
                version=NOW + 10**6,
                role=Role.PEER,
                routes=(RouteAdv(dest, (there.mesh_id,)),),
                proofs=(bad,),
            ),
            NOW,
        )


# --------------------------------------------------------------------------- finding 5


def _founded_with_token() -> tuple[Mesh, MeshNode, list[Bootstrap], Token]:
    """A members-admit mesh, its started founder, its bootstrap and a one-use token."""
    m = Mesh(Policy.MEMBERS)
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    boot = [Bootstrap("[2001:db8::1]:4000", bytes(32), m.founder.wg_public_key)]
    tok, _ = founder.invite(
        NOW, ttl_ms=3_600_000, uses=1, bootstrap=boot, secret=secrets.token_bytes(16)
    )
    return m, founder, boot, tok


def test_token_uses_are_counted_over_every_admission_ever() -> None:
    """Finding 5: a --uses 1 token admitted again after 64 admissions or after its admitter left."""
    m, founder, boot, tok = _founded_with_token()
    a = member_node(ident(2), m.mesh_id, MeshState(m.mesh_id, admission=True))
    assert join(founder, a, tok.secret, NOW + 1)
    assert a.record is not None and a.record.chain[-1].token_hash == tok.token_hash
    # A second member (admitted with a token of its own) replicates the ledger...
    helper = member_node(ident(3), m.mesh_id, MeshState(m.mesh_id, admission=True))
    tok2, _ = founder.invite(
        NOW + 2, ttl_ms=3_600_000, uses=1, bootstrap=boot, secret=secrets.token_bytes(16)
    )
    assert join(founder, helper, tok2.secret, NOW + 3)
    helper.absorb(founder.mesh.all_items(), NOW + 4)
    # ...and the admitted node leaves: the use still counts.
    a.leave(NOW + 5)
    helper.absorb(a.mesh.items_for([a.key]), NOW + 6)
    helper.mesh.gc(NOW + 10**8, 1000)  # its left record is collected
    assert a.key not in helper.mesh or not helper.mesh.is_member(a.key)
    b = member_node(ident(4), m.mesh_id, MeshState(m.mesh_id, admission=True))
    assert not join(helper, b, tok.secret, NOW + 10**8 // 2)
    assert not join(founder, b, tok.secret, NOW + 7)


def test_strict_token_only_admitted_by_its_issuer() -> None:
    m = Mesh(Policy.MEMBERS)
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    boot = [Bootstrap("[2001:db8::1]:4000", bytes(32), m.founder.wg_public_key)]
    plain, _ = founder.invite(
        NOW, ttl_ms=3_600_000, uses=1, bootstrap=boot, secret=secrets.token_bytes(16)
    )
    other = member_node(ident(2), m.mesh_id, MeshState(m.mesh_id, admission=True))
    assert join(founder, other, plain.secret, NOW + 1)
    strict, _ = founder.invite(
        NOW + 2,
        ttl_ms=3_600_000,
        uses=2,
        bootstrap=boot,
        secret=secrets.token_bytes(16),
        strict=True,
    )
    other.absorb(founder.mesh.all_items(), NOW + 3)
    joiner = member_node(ident(3), m.mesh_id, MeshState(m.mesh_id, admission=True))
    assert not join(other, joiner, strict.secret, NOW + 4)
    assert join(founder, joiner, strict.secret, NOW + 5)


# --------------------------------------------------------------------------- finding 6


def test_eviction_removes_and_keeps_out() -> None:
    """Finding 6: a pruned or departed node came back at once; nothing could remove one."""
    m = Mesh(Policy.MEMBERS)
    bad, child, later = ident(2), ident(3), ident(4)
    m.admit(bad)
    m.admit(child, by=bad)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    for n in (bad, child):
        assert st.apply(m.record(n), NOW)
    # A member that is not an admin cannot evict.
    peer = member_node(bad, m.mesh_id, MeshState(m.mesh_id, admission=True))
    peer.absorb(st.all_items(), NOW)
    with pytest.raises(NotAllowed):
        peer.evict(NOW, child.wg_public_key)
    admin.evict(NOW + 5000, bad.wg_public_key)
    assert bad.wg_public_key not in st and not st.is_member(bad.wg_public_key)
    assert st.is_live(child.wg_public_key)  # admitted before: kept
    # It cannot come back: a newer record, a restart...
    with pytest.raises(RecordError, match="evicted"):
        st.apply(m.record(bad, version=NOW + 10**6), NOW + 10**6 // 2)
    # ...nor a new identity admitted by itself after the eviction.
    m.admit(later, by=bad)
    with pytest.raises(RecordError, match="evicted"):
        st.apply(m.record(later), NOW)
    # The revocation survives garbage collection and replicates.
    st.gc(NOW + 10**9, 1000)
    assert st.authority.is_revoked(bad.wg_public_key)
    fresh = MeshState(m.mesh_id, admission=True)
    fresh.apply_many(st.all_items(), NOW + 6000)
    assert fresh.authority.is_revoked(bad.wg_public_key) and bad.wg_public_key not in fresh


def test_eviction_cascade_and_admins() -> None:
    m = Mesh(Policy.MEMBERS)
    second, bad, child = ident(2), ident(3), ident(4)
    for n in (second, bad):
        m.admit(n)
    m.admit(child, by=bad)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    for n in (second, bad, child):
        assert st.apply(m.record(n), NOW)
    admin.set_admin(NOW + 1000, second.wg_public_key, True)
    assert st.authority.is_admin(second.wg_public_key)
    # The second admin evicts with --cascade: the child goes too.
    other = member_node(second, m.mesh_id, MeshState(m.mesh_id, admission=True))
    other.absorb(st.all_items(), NOW + 2000)
    other.evict(NOW + 3000, bad.wg_public_key, cascade=True)
    assert not other.mesh.is_member(child.wg_public_key)
    # An admin change by a node never made an admin is not even kept (core.state_auth).
    bogus = AdminChange.create(
        child, m.mesh_id, subject=child.wg_public_key, admin=True, now_ms=NOW + 4000
    )
    with pytest.raises(HeldBack):
        st.apply(bogus, NOW + 4000)
    assert not st.authority.is_admin(child.wg_public_key) and bogus.key not in st
    # Revocations are evaluated in time order: one by a dropped admin after it was dropped is void.
    admin.set_admin(NOW + 5000, second.wg_public_key, False)
    late = Revocation.create(
        second, m.mesh_id, target=m.founder.wg_public_key, cascade=False, now_ms=NOW + 6000
    )
    st.apply(late, NOW + 6000)
    assert not st.authority.is_revoked(m.founder.wg_public_key)


def test_admin_changes_the_invite_policy_for_later_admissions() -> None:
    m = Mesh(Policy.PEERS)
    client = ident(2)
    m.admit(client, may_admit=False)
    st = m.state()
    admin = member_node(m.founder, m.mesh_id, st)
    admin.start(NOW)
    assert st.apply(m.record(client), NOW)
    assert st.authority.policy == Policy.PEERS
    # A member's policy change is void; an admin's applies from then on.
    from smegmesh.core.cert import PolicyChange

    with pytest.raises(HeldBack):
        st.apply(PolicyChange.create(client, m.mesh_id, policy=Policy.MEMBERS, now_ms=NOW + 1), NOW)
    assert st.authority.policy == Policy.PEERS
    with pytest.raises(NotAllowed):
        member_node(client, m.mesh_id, st).set_policy(NOW + 2, Policy.MEMBERS)
    admin.set_policy(NOW + 3, Policy.MEMBERS)
    assert st.authority.policy == Policy.MEMBERS
    assert st.authority.may_admit_by_policy(False)
    # ...and it replicates with the state.
    fresh = MeshState(m.mesh_id, admission=True)
    fresh.apply_many(st.all_items(), NOW + 4)
    assert fresh.authority.policy == Policy.MEMBERS


def test_a_joiner_whose_announcement_was_lost_is_known_after_its_first_refusal() -> None:
    """Issue 14 (100 real daemons): a joiner's pushes of its own record all timed
    out, so no member ever learnt of it and every member refused its calls for
    good (it pruned the whole mesh one by one). A refused call now shows the
    refusing member our record (at most once per member per heal interval)."""
    m, founder, _boot, tok = _founded_with_token()
    joiner = member_node(ident(5), m.mesh_id, MeshState(m.mesh_id, admission=True))
    reply, _ = founder.handle_request(joiner.key, joiner.join_request(tok.secret, NOW + 1), NOW + 1)
    assert isinstance(reply, JoinReply)
    reply = decode(encode(reply))
    joiner.absorb(reply.items, NOW + 2, reply.chain)  # admitted; its announcement is lost
    assert not founder.mesh.is_member(joiner.key)
    # The joiner calls the founder (a probe, a pull): refused.
    ping = next(
        o for t in range(NOW + 3, NOW + 10_000, 50) for o in joiner.tick(t) if isinstance(o, Call)
    )
    assert ping.to == founder.key
    refused, _ = founder.handle_request(joiner.key, ping.msg, NOW + 5_001)
    assert isinstance(refused, Refusal)
    outs = joiner.handle_reply(ping.to, ping.ctx, refused, NOW + 5_002)
    pushes = [o for o in outs if isinstance(o, Call) and isinstance(o.msg, Push)]
    assert [p.to for p in pushes] == [founder.key]
    founder.handle_request(joiner.key, decode(encode(pushes[0].msg)), NOW + 5_003)
    assert founder.mesh.is_member(joiner.key)
    # at most once per member per interval
    again = joiner.handle_reply(ping.to, ping.ctx, refused, NOW + 5_004)
    assert not [o for o in again if isinstance(o, Call)]


def test_a_join_sent_again_gets_the_same_certificate_and_adds_nothing() -> None:
    """Review (twenty-fourth session, founded-join fuzz target): a joiner's
    record reaches its admitter only after the join, so a join sent again (its
    reply lost, or replayed by whoever holds the secret) was admitted with a
    new certificate each time, every one stored and gossiped: 10,000 replays
    held 10,000 certificates and a join cost 28 ms (0.74 at 100). The admitter
    now answers a join again with the certificate it issued for that token and
    that key, and adds nothing to the mesh's state."""
    m, founder, _boot, tok = _founded_with_token()
    a = member_node(ident(2), m.mesh_id, MeshState(m.mesh_id, admission=True))
    req = decode(encode(a.join_request(tok.secret, NOW + 1)))
    first, outs = founder.handle_request(a.key, req, NOW + 1)
    assert isinstance(first, JoinReply) and outs
    held = len(founder.mesh.auth_items())
    for i in range(2, 12):
        again, outs = founder.handle_request(a.key, req, NOW + i)
        assert isinstance(again, JoinReply) and again.chain == first.chain
        assert not [o for o in outs if isinstance(o, Call)]  # nothing new to gossip
    assert len(founder.mesh.auth_items()) == held
    # the joiner's record has not come: a second key with the one-use token is refused
    b = member_node(ident(3), m.mesh_id, MeshState(m.mesh_id, admission=True))
    refused, _ = founder.handle_request(b.key, b.join_request(tok.secret, NOW + 20), NOW + 20)
    assert isinstance(refused, Refusal)
