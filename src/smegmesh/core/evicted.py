"""Telling an evicted node it was evicted, and its believing only a proof. Pure.

Members refuse an evicted node's calls (it is no member), and the eviction
statement, gossiped among the members, never reached it: they stop talking
to it as soon as they hold it. So an evicted node went on showing the mesh,
itself alone in it ("1/1 online"), and issuing invitations that no member
would honour (found by a user's sweep of the CLI).

Now a member answers a call of a node it holds as evicted with a ``Push`` of
that node's evictions (:func:`eviction_reply`, in place of the ``Refusal``;
the caller is authenticated, so the answer goes to the evicted node alone).
The node takes from such an answer an eviction *of itself* that verifies
(:func:`eviction_of`): well formed, signed by its issuer, and the issuer an
admin at its time by the node's own state. Nothing else in the answer is
taken, and the eviction is not merged into the state (it would purge the
node's own record, on which all its work stands): the node keeps it beside
(``MeshNode.evicted``), and smegd says so and refuses what only a member can
do. A member cannot make another node believe it was evicted: the statement
must be an admin's. An older node ignores the answer (a ``Push`` where it
waited for another reply counts as a refusal there too).
"""

from __future__ import annotations

from smegmesh.core.cert import CertError, Revocation, verify_auth
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push

__all__ = ["MAX_TOLD", "eviction_of", "eviction_reply"]

#: Evictions of one node sent, and looked at, in one answer (an evicted node
#: has one, or two where a second eviction cascaded).
MAX_TOLD = 4


def eviction_reply(mesh: MeshState, caller: bytes) -> Push | None:
    """The answer to a call of ``caller`` if ``mesh`` holds it as evicted, else None."""
    if not mesh.admission:
        return None
    revs = mesh.authority.revoked.get(caller)
    if not revs:
        return None
    return Push(mesh.mesh_id, tuple(revs[:MAX_TOLD]))


def eviction_of(mesh: MeshState, key: bytes, reply: object) -> Revocation | None:
    """An eviction of ``key`` in ``reply`` (a ``Push``) that verifies against ``mesh``, or None."""
    if not isinstance(reply, Push) or not mesh.admission or reply.mesh_id != mesh.mesh_id:
        return None
    auth = mesh.authority
    for item in reply.items[:MAX_TOLD]:
        if type(item) is not Revocation or item.target != key:
            continue
        try:
            verify_auth(item, mesh.mesh_id)
        except CertError:
            continue
        if auth.was_admin_at(item.issuer, item.issued_ms):
            return item
    return None
