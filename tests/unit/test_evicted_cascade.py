"""A node evicted by cascade, or by an admin it never heard of, is told too (core.evicted).

Left by the twenty-ninth session: a member answered with a ``Push`` only a
node it held in its list of evictions, and the node believed only an eviction
of itself by an admin its own state knew. So a node removed because an admin
evicted its admitter with ``--cascade`` (it is in no list of evictions), and a
node evicted by an admin made after it lost contact (its state cannot check
that admin), got a ``Refusal`` and went on as a member. Now the answer carries
what the node needs to check it alone, against its own state: the eviction
that voids a link of its own admission chain, and the admin changes from the
founder to the evicting admin. A member still cannot make it believe anything
no admin signed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from smegmesh.cli.tables import evicted_line
from smegmesh.core.cert import AdminChange, Cert, Revocation
from smegmesh.core.engine import Call, CallCtx
from smegmesh.core.evicted import eviction_reply
from smegmesh.core.identity import NodeIdentity, key_to_text, verify_many
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import Refusal
from smegmesh.core.record import NodeRecord
from smegmesh.core.sync import Push
from smegmesh.daemon.events import describe
from smegmesh.daemon.views import evicted_self
from smegmesh.testbed.founded import NOW, Mesh, drive, each_over_own_state, ident


def _chained() -> tuple[Mesh, MeshNode, MeshNode, MeshNode, MeshNode]:
    """The founder (the admin), a member A, B, and C admitted by B; each with a state of all."""
    m = Mesh()
    b = ident(3)
    admin, a, nb, c = each_over_own_state(m, [ident(2), b, ident(4)], by=[None, None, b])
    assert c.chain[-1].issuer == b.wg_public_key
    return m, admin, a, nb, c


def _members_know(admin: MeshNode, *others: MeshNode) -> None:
    """The admin's statements gossiped to ``others`` (they purge what they evict)."""
    for o in others:
        o.mesh.apply_many(admin.mesh.auth_items(), NOW + 5_500)


def test_a_node_evicted_by_cascade_is_told_and_believes_it() -> None:
    _m, admin, a, b, c = _chained()
    admin.evict(NOW + 5_000, b.key, cascade=True)
    _members_know(admin, a)
    assert not admin.mesh.is_member(c.key) and not a.mesh.is_member(c.key)
    assert c.key not in admin.mesh.authority.revoked  # not in the list of evictions
    drive(c, [admin, a], NOW + 6_000, NOW + 16_000)
    told = c.evicted
    assert isinstance(told, Revocation)  # before: None (only Refusals)
    assert told.target == b.key and told.cascade and told.issuer == admin.key
    assert c.mesh.record(c.key) is not None  # its own record stays
    assert not c.may_admit(NOW + 16_000)


def test_a_node_two_links_below_the_evicted_one_is_told() -> None:
    """D, admitted by C, admitted by B: B evicted with --cascade, D goes too."""
    m = Mesh()
    b, c = ident(3), ident(4)
    admin, a, _b, _c, d = each_over_own_state(m, [ident(2), b, c, ident(5)], by=[None, None, b, c])
    admin.evict(NOW + 5_000, b.wg_public_key, cascade=True)
    _members_know(admin, a)
    assert not a.mesh.is_member(d.key)
    drive(d, [admin, a], NOW + 6_000, NOW + 16_000)
    assert d.evicted is not None and d.evicted.target == b.wg_public_key


def test_a_node_left_out_of_its_admitters_eviction_is_told() -> None:
    """Not ``--cascade``, but ``keep`` lacks it (the admin did not know it yet)."""
    m, admin, a, b, c = _chained()
    rev = Revocation.create(
        m.founder, m.mesh_id, target=b.key, cascade=False, keep=(a.key,), now_ms=NOW + 5_000
    )
    for n in (admin, a):
        n.mesh.apply_many([rev], NOW + 5_000)
    assert not admin.mesh.is_member(c.key)
    drive(c, [admin, a], NOW + 6_000, NOW + 16_000)
    assert c.evicted == rev


def test_a_member_cannot_make_a_node_believe_a_cascade_it_was_not_in() -> None:
    m, _admin, a, b, c = _chained()
    kept = Revocation.create(  # B evicted, C kept: C stays a member
        m.founder, m.mesh_id, target=b.key, cascade=False, keep=(c.key,), now_ms=NOW + 5_000
    )
    of_a = Revocation.create(  # an eviction with cascade of a node not in C's chain
        m.founder, m.mesh_id, target=a.key, cascade=True, keep=(), now_ms=NOW + 5_000
    )
    by_member = Revocation.create(  # a member's own "cascade" of C's admitter
        a.identity, m.mesh_id, target=b.key, cascade=True, keep=(), now_ms=NOW + 5_000
    )
    for rev in (kept, of_a, by_member):
        c.handle_reply(a.key, _ctx(c, a), Push(m.mesh_id, (rev,)), NOW + 6_000)
        assert c.evicted is None, rev


def test_a_stranger_naming_an_evicted_admitter_is_not_sent_its_eviction() -> None:
    """Else anyone could fetch a large eviction (its ``keep``) from every member at will."""
    m, admin, _a, b, c = _chained()
    admin.evict(NOW + 5_000, b.key, cascade=True)
    s = ident(9)
    by_t = Cert.create(ident(10), m.mesh_id, subject=s.wg_public_key, may_admit=True, now_ms=NOW)
    forged = replace(by_t, issuer=b.key, issuer_sign=b.identity.sign_public_key)
    for chain in ((*b.chain, forged), c.chain):  # a bad signature; a chain that is not its own
        rec = NodeRecord.create(s, m.mesh_id, version=NOW + 6_000, now_ms=NOW + 6_000, chain=chain)
        reply, _ = admin.handle_request(s.wg_public_key, Push(m.mesh_id, (rec,)), NOW + 6_000)
        assert isinstance(reply, Refusal)
    # C's own push of its record is answered with the eviction voiding its chain
    rec = c.mesh.record(c.key)
    assert rec is not None
    reply, _ = admin.handle_request(c.key, Push(m.mesh_id, (rec,)), NOW + 6_000)
    assert isinstance(reply, Push) and reply.items[0] == admin.mesh.authority.revoked[b.key][0]


def test_a_cascade_stops_counting_once_the_node_is_admitted_again() -> None:
    m, admin, a, b, c = _chained()
    admin.evict(NOW + 5_000, b.key, cascade=True)
    _members_know(admin, a)
    drive(c, [admin, a], NOW + 6_000, NOW + 16_000)
    assert c.evicted is not None
    # an admin admits C again, its chain no longer through B (a new invitation)
    chain = m.admit(c.identity)
    c.absorb([], NOW + 20_000, chain)
    assert c.evicted is None


def test_a_node_evicted_by_an_admin_it_never_heard_of_is_told() -> None:
    m = Mesh()
    admin, a, b = each_over_own_state(m, [ident(2), ident(3)])
    x = ident(5)
    y = ident(6)
    # the founder makes Y an admin, Y makes X one, X evicts B: B, cut off, knew none of it
    made_y = AdminChange.create(
        m.founder, m.mesh_id, subject=y.wg_public_key, admin=True, now_ms=NOW + 1_000
    )
    made_x = AdminChange.create(
        y, m.mesh_id, subject=x.wg_public_key, admin=True, now_ms=NOW + 2_000
    )
    rev = Revocation.create(x, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 3_000)
    for n in (admin, a):
        assert not n.mesh.apply_many([made_y, made_x, rev], NOW + 3_000)[1]
        assert not n.mesh.is_member(b.key)
    assert not b.mesh.authority.is_admin(x.wg_public_key)
    drive(b, [admin, a], NOW + 6_000, NOW + 16_000)
    assert b.evicted == rev  # before: None (X unknown to B)
    assert b.mesh.authority.was_admin_at(x.wg_public_key, rev.issued_ms)


def test_admin_changes_no_admin_signed_do_not_make_a_node_believe() -> None:
    m = Mesh()
    _admin, a, b = each_over_own_state(m, [ident(2), ident(3)])
    # member A makes itself an admin and evicts B: no admin's statement
    made = AdminChange.create(a.identity, m.mesh_id, subject=a.key, admin=True, now_ms=NOW + 1_000)
    rev = Revocation.create(
        a.identity, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 2_000
    )
    b.handle_reply(a.key, _ctx(b, a), Push(m.mesh_id, (rev, made)), NOW + 6_000)
    assert b.evicted is None
    assert not b.mesh.authority.is_admin(a.key)


def test_the_admin_proof_is_the_changes_that_made_the_issuer_an_admin_then() -> None:
    m = Mesh()
    admin, _a, b = each_over_own_state(m, [ident(2), ident(3)])
    x, y = ident(5), ident(6)
    xk = x.wg_public_key

    def change(by: NodeIdentity, who: bytes, on: bool, t: int) -> AdminChange:
        return AdminChange.create(by, m.mesh_id, subject=who, admin=on, now_ms=NOW + t)

    made_y = change(m.founder, y.wg_public_key, True, 1_000)
    made_x = change(y, xk, True, 2_000)
    dropped = change(m.founder, xk, False, 3_000)
    again = change(m.founder, xk, True, 4_000)
    assert not admin.mesh.apply_many([made_y, made_x, dropped, again], NOW + 4_000)[1]
    auth = admin.mesh.authority
    assert auth.admin_proof(xk, NOW + 2_500) == [made_y, made_x]
    assert auth.admin_proof(xk, NOW + 3_500) == []  # no admin then
    assert auth.admin_proof(xk, NOW + 5_000) == [again]
    assert auth.admin_proof(m.founder.wg_public_key, NOW + 5_000) == []  # needs none
    # the answer to an evicted node: the eviction first (where an older node looks),
    # then the changes, founder's first
    rev = Revocation.create(x, m.mesh_id, target=b.key, cascade=False, keep=(), now_ms=NOW + 2_500)
    assert not admin.mesh.apply_many([rev], NOW + 5_000)[1]
    told = eviction_reply(admin.mesh, b.key)
    assert told is not None and list(told.items) == [rev, made_y, made_x]


def _ctx(n: MeshNode, to: MeshNode) -> CallCtx:
    """The context of a call ``n`` makes to ``to`` within a minute (a probe, a pull...)."""
    for t in range(NOW + 5_001, NOW + 65_000, 50):
        for o in n.tick(t):
            if isinstance(o, Call) and o.to == to.key:
                return o.ctx
    raise AssertionError("no call")


def test_status_and_the_event_name_the_node_a_cascade_went_through() -> None:
    """``evicted_self`` is this node (before: the admitter's key, in the place of its
    own), ``through`` the admitter evicted; the CLI line and the event say so."""
    _m, admin, _a, b, c = _chained()
    admin.evict(NOW + 5_000, b.key, cascade=True)
    rev = admin.mesh.authority.revoked[b.key][0]
    shown = evicted_self(c.mesh_id, c.key, rev)
    assert shown.public_key == key_to_text(c.key) and shown.through == key_to_text(b.key)
    assert shown.by == key_to_text(admin.key) and shown.cascade
    line = evicted_line(c.mesh_id, shown)
    assert f"with {key_to_text(b.key)[:12]}…, through which it was admitted" in line
    direct = evicted_self(b.mesh_id, b.key, rev)
    assert direct.public_key == key_to_text(b.key) and direct.through is None
    assert "through which" not in evicted_line(b.mesh_id, direct)
    ev = {
        "type": "mesh.evicted",
        "mesh": c.mesh_id,
        "node": key_to_text(admin.key),
        "detail": {"time": 1.0, "cascade": True, "through": key_to_text(b.key)},
    }
    assert "through which it was admitted" in describe(ev)


def test_a_forged_chain_through_an_evicted_admitter_costs_one_signature_check() -> None:
    """A refused push's chain is checked as gossip checks one: the first forged
    certificate ends the checks (core.forgery). Before: every certificate of the
    chain not held was checked, in one batch, at each push (up to 31 checks a
    push, answered with a Refusal and nothing remembered), for any caller key."""
    m, admin, _a, b, _c = _chained()
    admin.evict(NOW + 5_000, b.key, cascade=True)
    links = [ident(20 + i) for i in range(21)]
    chain = list(b.chain)
    prev = b.identity
    for who in links:  # B -> L0 -> L1 -> ...: each signed by a key that is not its issuer's
        by_t = Cert.create(
            ident(99), m.mesh_id, subject=who.wg_public_key, may_admit=True, now_ms=NOW + 1_000
        )
        chain.append(replace(by_t, issuer=prev.wg_public_key, issuer_sign=prev.sign_public_key))
        prev = who
    s = links[-1]
    rec = NodeRecord.create(s, m.mesh_id, version=NOW + 6_000, now_ms=NOW + 6_000, chain=chain)
    checked: list[int] = []

    def counting(jobs: Sequence[tuple[bytes, bytes, bytes]]) -> list[bool]:
        checked.append(len(jobs))
        return verify_many(jobs)

    admin.mesh.set_verifier(counting)
    for i in range(3):
        reply, _ = admin.handle_request(
            s.wg_public_key, Push(m.mesh_id, (rec,)), NOW + 6_000 + i * 10
        )
        assert isinstance(reply, Refusal)
    assert sum(checked) <= 3, checked
