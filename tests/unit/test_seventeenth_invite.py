"""The seventeenth outstanding invitation is refused with a clear error, never kills the first.

Found by a review of the authority: a member's record holds at most 16 grants
(MAX_INVITES) and invite() kept the last 15 unexpired ones plus the new one,
so the 17th `smegctl invite` (a provisioning script: one token per new node)
silently revoked the first, still valid and unused; spent and revoked grants
were not dropped first.
"""

from __future__ import annotations

import secrets

import pytest

from smegmesh.core.cert import Policy
from smegmesh.core.engine import TooManyInvites
from smegmesh.core.invite import Bootstrap, Token
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.messages import JoinReply
from smegmesh.core.record import MAX_INVITES
from smegmesh.core.state import MeshState
from smegmesh.testbed.founded import NOW, Mesh, ident, member_node

BOOT = [Bootstrap("[2001:db8::1]:4000", bytes(32), ident(1).wg_public_key)]
DAY = 86_400_000


def _invite(node: MeshNode, now: int, ttl_ms: int = DAY) -> Token:
    tok, _ = node.invite(now, ttl_ms=ttl_ms, uses=1, bootstrap=BOOT, secret=secrets.token_bytes(16))
    return tok


def _joins(node: MeshNode, tok: Token, now: int, i: int) -> bool:
    joiner = member_node(ident(i), node.mesh_id, MeshState(node.mesh_id, admission=True))
    reply, _ = node.handle_request(joiner.key, joiner.join_request(tok.secret, now), now)
    return isinstance(reply, JoinReply)


def _founder() -> MeshNode:
    m = Mesh(Policy.PEERS)
    founder = member_node(m.founder, m.mesh_id, m.state())
    founder.start(NOW)
    return founder


def test_the_seventeenth_invitation_is_refused_and_the_first_still_admits() -> None:
    founder = _founder()
    toks = [_invite(founder, NOW + i) for i in range(MAX_INVITES)]
    with pytest.raises(TooManyInvites, match="16 invitations outstanding"):
        _invite(founder, NOW + 100)
    assert _joins(founder, toks[0], NOW + 200, 9), "the first token died of the 17th invite"


def test_spent_revoked_and_expired_invitations_make_room() -> None:
    founder = _founder()
    toks = [_invite(founder, NOW + i, ttl_ms=DAY if i else 1000) for i in range(MAX_INVITES)]
    assert _joins(founder, toks[1], NOW + 20, 9)  # spent (one use)
    founder.revoke_invite(NOW + 21, toks[2].token_hash)  # revoked
    late = NOW + 5000  # toks[0] has expired
    for i in range(3):
        _invite(founder, late + i)
    with pytest.raises(TooManyInvites):
        _invite(founder, late + 10)
    assert all(_joins(founder, t, late + 20 + j, 20 + j) for j, t in enumerate(toks[3:]))
