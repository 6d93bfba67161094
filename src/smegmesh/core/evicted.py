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
must be an admin's, and it stops counting once the node learns its issuer was
no admin at its time (:class:`EvictedMixin`). An older node takes the answer
as an answer of no kind it waited for (not as a refusal): it is no member.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smegmesh.core.cert import MAX_KEEP, CertError, Revocation, verify_auth
from smegmesh.core.messages import Refusal
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push

__all__ = ["MAX_TOLD", "TELL_INTERVAL_MS", "EvictedMixin", "eviction_of", "eviction_reply"]

#: Evictions of one node sent, and looked at, in one answer (an evicted node
#: has one, or two where a second eviction cascaded).
MAX_TOLD = 4
#: An evicted caller is shown its evictions once per this interval (ms), a
#: ``Refusal`` between (it calls each member every probe period or so, and a
#: revocation keeps up to :data:`MAX_KEEP` keys: ~130 kB); callers remembered.
TELL_INTERVAL_MS = 3_000
MAX_TOLD_CALLERS = 4096


class EvictedMixin:
    """Our eviction a member showed us, and the answer to an evicted caller (MeshNode).

    The eviction is checked against our state at each use, not once: taken by
    our view of who was an admin when, it is void once we learn its issuer
    was evicted or dropped before it (an admin change we did not know of: the
    members do not honour it, and we must not believe it for good).
    """

    if TYPE_CHECKING:

        @property
        def mesh(self) -> MeshState: ...  # noqa: D102

    _evicted: Revocation | None = None
    _tell_due: dict[bytes, int] | None = None

    @property
    def evicted(self) -> Revocation | None:
        """The eviction of us a member showed us, while it holds by our state."""
        rev = self._evicted
        if rev is None or not self.mesh.admission:
            return None
        return rev if self.mesh.authority.was_admin_at(rev.issuer, rev.issued_ms) else None

    @evicted.setter
    def evicted(self, rev: Revocation | None) -> None:
        self._evicted = rev

    def _refuse(self, caller: bytes, now_ms: int) -> Push | Refusal:
        """A ``Refusal``, or a ``Push`` of its evictions to an evicted caller once an interval."""
        due = self._tell_due if self._tell_due is not None else {}
        self._tell_due = due
        if due.get(caller, 0) <= now_ms:
            told = eviction_reply(self.mesh, caller)
            if told is not None:
                if len(due) >= MAX_TOLD_CALLERS:
                    for k in [k for k, t in due.items() if t <= now_ms] or list(due)[:1]:
                        del due[k]
                due.pop(caller, None)
                due[caller] = now_ms + TELL_INTERVAL_MS
                return told
        return Refusal(self.mesh.mesh_id)


def eviction_reply(mesh: MeshState, caller: bytes) -> Push | None:
    """The answer to a call of ``caller`` if ``mesh`` holds it as evicted, else None."""
    if not mesh.admission:
        return None
    revs = mesh.authority.revoked.get(caller)
    if not revs:
        return None
    told: list[Revocation] = []  # the smallest first (``keep``), and at most MAX_KEEP keys
    for r in sorted(revs, key=lambda r: (len(r.keep), r.issued_ms))[:MAX_TOLD]:
        if told and sum(len(t.keep) for t in told) + len(r.keep) > MAX_KEEP:
            break
        told.append(r)
    return Push(mesh.mesh_id, tuple(told))


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
