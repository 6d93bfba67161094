"""Invitation grants count only in the record of a member that may invite, for itself.

Found by a review of the authority: check_admission took a token's terms from
any live record listing its hash (the last one won) and nothing checked that
the record's owner may invite. A client under ``peers`` minted tokens an
honest peer honoured; any member re-published a public hash with laxer terms
(a strict, one-use, 60 s token admitted 4 nodes, one after its expiry) or
undid its issuer's revocation.
"""

from __future__ import annotations

import secrets

import pytest

from smegmesh.core.cert import Policy
from smegmesh.core.invite import Bootstrap, token_hash
from smegmesh.core.meshnode import MeshNode, NotAllowed
from smegmesh.core.messages import JoinReply, Refusal
from smegmesh.core.record import InviteGrant
from smegmesh.core.state import MeshState
from smegmesh.core.wire import decode, encode
from smegmesh.testbed.founded import NOW, Mesh, ident, join, member_node

BOOT = [Bootstrap("[2001:db8::1]:4000", bytes(32), ident(1).wg_public_key)]
HOUR = 3_600_000


def _node(i: int, m: Mesh) -> MeshNode:
    return member_node(ident(i), m.mesh_id, MeshState(m.mesh_id, admission=True))


def _two_members(policy: Policy) -> tuple[Mesh, MeshNode, MeshNode, MeshNode]:
    """A founder, and two members it admitted (``a``, ``b``), every state holding all."""
    m = Mesh(policy)
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    a, b = _node(2, m), _node(3, m)
    for n, t in ((a, NOW + 1), (b, NOW + 2)):
        tok, _ = founder.invite(
            t, ttl_ms=HOUR, uses=1, bootstrap=BOOT, secret=secrets.token_bytes(16)
        )
        assert join(founder, n, tok.secret, t)
    for n in (a, b):
        n.mesh.apply_many(founder.mesh.all_items(), NOW + 3)
    return m, founder, a, b


def test_a_client_that_may_not_invite_mints_no_token_an_honest_peer_honours() -> None:
    m = Mesh(Policy.PEERS)
    client_id = ident(2)
    m.admit(client_id, may_admit=False)  # what an admitter writes for a client under 'peers'
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    founder.mesh.apply(m.record(client_id), NOW)
    client = member_node(client_id, m.mesh_id, MeshState(m.mesh_id, admission=True))
    client.absorb(founder.mesh.all_items(), NOW + 1)
    with pytest.raises(NotAllowed):  # the honest path is closed...
        client.invite(NOW + 2, ttl_ms=HOUR, uses=1, bootstrap=BOOT, secret=secrets.token_bytes(16))
    # ...and a grant it puts in its own signed record counts for nothing
    secret = secrets.token_bytes(16)
    grant = InviteGrant(token_hash(secret), NOW + HOUR, 10**6)
    client.update_self(NOW + 3, invites=(grant,))
    founder.mesh.apply_many(client.mesh.items_for([client.key]), NOW + 4)
    assert founder.mesh.record(client.key).invites == (grant,)  # type: ignore[union-attr]
    assert not join(founder, _node(9, m), secret, NOW + 5), "a client's own token admitted"


def test_a_member_cannot_lift_the_strict_flag_uses_or_expiry_of_anothers_token() -> None:
    m, founder, a, _b = _two_members(Policy.MEMBERS)
    strict, _ = founder.invite(
        NOW + 4, ttl_ms=60_000, uses=1, bootstrap=BOOT, secret=secrets.token_bytes(16), strict=True
    )
    a.mesh.apply_many(founder.mesh.all_items(), NOW + 5)
    # the hash is public (in the founder's record): 'a' publishes it again, lax
    a.update_self(NOW + 6, invites=(InviteGrant(strict.token_hash, NOW + HOUR, 10**6),))
    admitted = sum(join(a, _node(10 + i, m), strict.secret, NOW + 10 + i) for i in range(3))
    admitted += join(a, _node(20, m), strict.secret, NOW + 10 * 60_000)  # after its expiry
    assert admitted == 0, f"a strict, one-use, 60 s token admitted {admitted} nodes"
    assert join(founder, _node(21, m), strict.secret, NOW + 20)  # its issuer still admits


def test_an_issuers_revocation_is_not_undone_by_another_member_republishing_the_hash() -> None:
    m, founder, a, b = _two_members(Policy.MEMBERS)
    tok, _ = a.invite(NOW + 4, ttl_ms=HOUR, uses=5, bootstrap=BOOT, secret=secrets.token_bytes(16))
    a.revoke_invite(NOW + 5, tok.token_hash)  # a (not an admin) revokes its own token
    founder.mesh.apply_many(a.mesh.all_items(), NOW + 6)
    assert not join(founder, _node(29, m), tok.secret, NOW + 7)
    b.mesh.apply_many(founder.mesh.all_items(), NOW + 7)
    b.update_self(NOW + 8, invites=(InviteGrant(tok.token_hash, NOW + HOUR, 5),))
    founder.mesh.apply_many(b.mesh.items_for([b.key]), NOW + 9)
    assert not join(founder, _node(30, m), tok.secret, NOW + 10), "a revoked token admitted"


def test_a_grant_of_an_earlier_version_counts_unless_another_member_lists_it_too() -> None:
    """Wire compatibility: a record of the previous version lists the hash of the secret alone."""
    m, founder, a, b = _two_members(Policy.MEMBERS)
    secret = secrets.token_bytes(16)
    a.update_self(NOW + 4, invites=(InviteGrant(token_hash(secret), NOW + HOUR, 3),))
    founder.mesh.apply_many(a.mesh.items_for([a.key]), NOW + 5)
    assert join(founder, _node(40, m), secret, NOW + 6)
    # another member copies the public hash with other terms: neither counts any more
    b.update_self(NOW + 7, invites=(InviteGrant(token_hash(secret), NOW + HOUR, 10**6),))
    founder.mesh.apply_many(b.mesh.items_for([b.key]), NOW + 8)
    assert not join(founder, _node(41, m), secret, NOW + 9)


def test_a_grant_that_lives_longer_than_a_year_is_refused() -> None:
    """Its ledger entry would be refused by every member (it could never be collected)."""
    m, founder, a, _b = _two_members(Policy.MEMBERS)
    secret = secrets.token_bytes(16)
    year = 365 * 86_400_000
    a.update_self(NOW + 4, invites=(InviteGrant(token_hash(secret), NOW + 2 * year, 3),))
    founder.mesh.apply_many(a.mesh.items_for([a.key]), NOW + 5)
    assert not join(founder, _node(50, m), secret, NOW + 6)


def test_a_join_refused_for_its_sender_does_no_token_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Second read, finding 2: the token lookup (a hash per record listing
    invitations, and a pass over the records) ran before the cheap refusals
    (a record not the sender's, an evicted sender), for anyone who sent a join."""
    from smegmesh.core import admission

    m, founder, a, _b = _two_members(Policy.MEMBERS)
    tok, _ = founder.invite(NOW + 1, ttl_ms=HOUR, uses=5, bootstrap=BOOT, secret=b"\x05" * 16)
    calls: list[bytes] = []
    real = admission.check_admission

    def counting(*args: object, **kw: object) -> object:
        calls.append(args[2])  # type: ignore[arg-type]
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(admission, "check_admission", counting)
    joiner = _node(9, m)
    req = decode(encode(joiner.join_request(tok.secret, NOW + 2)))
    reply, _ = founder.handle_request(ident(10).wg_public_key, req, NOW + 2)  # not its record
    assert isinstance(reply, Refusal) and calls == []
    founder.evict(NOW + 3, a.key)
    req = decode(encode(a.join_request(tok.secret, NOW + 4)))
    reply, _ = founder.handle_request(a.key, req, NOW + 4)  # evicted
    assert isinstance(reply, Refusal) and calls == []
    req = decode(encode(joiner.join_request(tok.secret, NOW + 5)))
    reply, _ = founder.handle_request(joiner.key, req, NOW + 5)
    assert isinstance(reply, JoinReply) and calls == [joiner.key]
