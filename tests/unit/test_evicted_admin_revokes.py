"""An invitation revocation counts if its issuer was an admin at the time it carries.

Found by a review of the authority: Authority.token_revoked honoured an
InviteRevoke by anyone who was ever an admin, whenever dated. An admin evicted
(say its key was stolen, evicted as docs/SECURITY.md advises) or dropped still
revoked every invitation of the mesh: the mesh became unjoinable, each new
token revoked as it appeared.
"""

from __future__ import annotations

import secrets

from smegmesh.core.cert import InviteRevoke, Policy
from smegmesh.core.invite import Bootstrap
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import JoinReply
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

BOOT = [Bootstrap("[2001:db8::1]:4000", bytes(32), ident(1).wg_public_key)]
HOUR = 3_600_000


def _mesh() -> tuple[Mesh, MeshNode]:
    m = Mesh(Policy.PEERS)
    for i in (2, 3):
        m.admit(ident(i))
    st = m.state()
    founder = member_node(m.founder, m.mesh_id, st)
    founder.start(NOW)
    for i in (2, 3):
        assert st.apply(m.record(ident(i)), NOW)
    founder.set_admin(NOW + 10_000, ident(2).wg_public_key, True)
    return m, founder


def _revoked_by_x(m: Mesh, founder: MeshNode, at: int) -> bool:
    """Whether a revocation by ident(2), dated ``at``, stops a new founder token."""
    tok, _ = founder.invite(
        NOW + 30_000, ttl_ms=HOUR, uses=1, bootstrap=BOOT, secret=secrets.token_bytes(16)
    )
    late = InviteRevoke.create(ident(2), m.mesh_id, token_hash=tok.token_hash, now_ms=at)
    relay = ident(3).wg_public_key  # any member relays it
    founder.handle_request(relay, Push(m.mesh_id, (late,)), NOW + 40_000)
    joiner = member_node(ident(9), m.mesh_id, MeshState(m.mesh_id, admission=True))
    reply, _ = founder.handle_request(
        joiner.key, joiner.join_request(tok.secret, NOW + 50_000), NOW + 50_000
    )
    return not isinstance(reply, JoinReply)


def test_an_evicted_admin_cannot_revoke_invitations_after_its_eviction() -> None:
    m, founder = _mesh()
    founder.evict(NOW + 20_000, ident(2).wg_public_key)  # its key was stolen: evicted
    assert not _revoked_by_x(m, founder, NOW + 40_000), "an evicted admin's revocation counted"


def test_a_dropped_admin_cannot_revoke_invitations_after_it_was_dropped() -> None:
    m, founder = _mesh()
    founder.set_admin(NOW + 20_000, ident(2).wg_public_key, False)
    assert not _revoked_by_x(m, founder, NOW + 40_000), "a dropped admin's revocation counted"


def test_an_admins_revocation_counts_while_it_is_one() -> None:
    m, founder = _mesh()
    assert _revoked_by_x(m, founder, NOW + 15_000)
