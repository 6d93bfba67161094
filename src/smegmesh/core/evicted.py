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
admin at its time by the node's own state. Of itself, or by cascade: of a
node in its own admission chain, voiding the link to the next (an admin ran
``evict --cascade`` on its admitter, or evicted it keeping others). A node so
evicted is in no list of evictions; it shows itself by the push of its own
record that follows a refusal, whose chain (real, ending with it) tells the
member which evictions to send (:func:`_cascade`).

The answer carries too the admin changes that made each eviction's issuer an
admin (``Authority.admin_proof``), for a node that lost contact before that
admin was made: the node takes them into its state through its gate, as
gossip would (:meth:`EvictedMixin._told`). Nothing else in the answer is
taken, and the eviction is not merged into the state (it would purge the
node's own record, on which all its work stands): the node keeps it beside
(``MeshNode.evicted``), and smegd says so and refuses what only a member can
do. A member cannot make another node believe it was evicted: the statement
must be an admin's, and it stops counting once the node learns its issuer was
no admin at its time (:class:`EvictedMixin`). An older node takes the answer
as an answer of no kind it waited for (not as a refusal): it is no member.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from smegmesh.core.authority import voids
from smegmesh.core.buckets import shifted
from smegmesh.core.cert import (
    MAX_CHAIN,
    MAX_KEEP,
    AdminChange,
    Cert,
    CertError,
    Revocation,
    verify_auth,
)
from smegmesh.core.engine import Call, Changed, Message, Out, SyncCtx
from smegmesh.core.messages import Refusal
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import MeshState
from smegmesh.core.sync import Push, SyncSession

if TYPE_CHECKING:
    import random

    from smegmesh.core.liveness import FailureDetector
    from smegmesh.core.nodeviews import Views

__all__ = [
    "EVICTED_CHECK_MS",
    "MAX_TOLD",
    "MAX_TOLD_ITEMS",
    "TELL_INTERVAL_MS",
    "EvictedMixin",
    "concerns",
    "eviction_of",
    "eviction_reply",
]

#: Evictions of one node sent, and looked at, in one answer (an evicted node
#: has one, or two where a second eviction cascaded).
MAX_TOLD = 4
#: Items of an answer looked at: the evictions first, then the admin changes that
#: made their issuers admins, back to the founder (at most ``MAX_CHAIN`` each).
MAX_TOLD_ITEMS = MAX_TOLD * (1 + MAX_CHAIN)
#: An evicted caller is shown its evictions once per this interval (ms), a
#: ``Refusal`` between (it calls each member every probe period or so, and a
#: revocation keeps up to :data:`MAX_KEEP` keys: ~130 kB); callers remembered.
TELL_INTERVAL_MS = 3_000
MAX_TOLD_CALLERS = 4096
#: A node that knows it was evicted calls one member, at random, this often (ms):
#: a pull, to see whether the eviction turned out void; nothing else.
EVICTED_CHECK_MS = 300_000


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
        @property
        def key(self) -> bytes: ...  # noqa: D102
        def _reachable_peers(self) -> list[bytes]: ...
        def _views(self) -> Views: ...

        _fd: FailureDetector
        rng: random.Random

    _evicted: Revocation | None = None
    _tell_due: dict[bytes, int] | None = None
    #: since when we have known we were evicted (None: we do not), our next check
    _quiet_since: int | None = None
    _check_due: int = 0

    @property
    def evicted(self) -> Revocation | None:
        """The eviction of us a member showed us, while it holds by our state."""
        rev = self._evicted
        if rev is None or not self.mesh.admission or not concerns(self.mesh, self.key, rev):
            return None
        return rev if self.mesh.authority.was_admin_at(rev.issuer, rev.issued_ms) else None

    @evicted.setter
    def evicted(self, rev: Revocation | None) -> None:
        self._evicted = rev

    def _evicted_tick(self, now_ms: int) -> list[Out] | None:
        """The clock while we know we were evicted; None: we do not (tick as ever).

        No gossip, no probes (every member refuses them, at its cost, and a
        peer pruned the members in turn until it showed itself alone): once
        each :data:`EVICTED_CHECK_MS`, a pull from one member at random. One
        that holds us evicted answers with our eviction again; one that does
        not (it is void: its issuer was no admin then) with its state, which
        shows us that. Back, the time we were quiet counts as a stall of
        the failure detector: the members are not suspected for our silence.
        """
        if self.evicted is None:
            since, self._quiet_since = self._quiet_since, None
            if since is not None:
                self._fd.stalled(now_ms - since, now_ms)
            return None
        if self._quiet_since is None:
            self._quiet_since = now_ms
            self._check_due = now_ms + EVICTED_CHECK_MS
        if now_ms < self._check_due:
            return []
        self._check_due = now_ms + EVICTED_CHECK_MS
        members = self._reachable_peers() or list(self._views().pruned)
        if not members:
            return []
        session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
        return [Call(self.rng.choice(members), session.start(), SyncCtx(session))]

    def _evicted_deadline(self) -> int:
        """Our next deadline while we know we were evicted: the next check (0: now)."""
        return self._check_due if self._quiet_since is not None else 0

    def _evicted_clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped: our times move with it (``MeshNode.clock_stepped``)."""
        self._tell_due = shifted(self._tell_due or {}, delta_ms)
        self._check_due += delta_ms
        if self._quiet_since is not None:
            self._quiet_since += delta_ms

    def _told(self, reply: Message, now_ms: int) -> list[Out]:
        """A member refused our call: take our eviction if its answer shows one.

        The admin changes it carries (how the evicting admin came to be one:
        an admin made after we lost contact) go into our state first, as
        gossip would bring them: through the state's gate (signed, by a node
        the state names as made an admin by an admin; else held back), so a
        member can make no admin with them. Then :func:`eviction_of`.
        """
        st = self.mesh
        if self.evicted is not None or not isinstance(reply, Push) or not st.admission:
            return []
        if reply.mesh_id != st.mesh_id:
            return []
        items = reply.items[:MAX_TOLD_ITEMS]
        if not any(type(i) is Revocation and concerns(st, self.key, i) for i in items[:MAX_TOLD]):
            return []
        changed, _faults = st.apply_many([i for i in items if type(i) is AdminChange], now_ms)
        self.evicted = eviction_of(st, self.key, reply)
        return [Changed(frozenset(changed))] if changed else []

    def _refuse(
        self, caller: bytes, now_ms: int, claimed: Sequence[NodeRecord] = ()
    ) -> Push | Refusal:
        """A ``Refusal``, or a ``Push`` of its evictions to an evicted caller once an interval.

        ``claimed``: the caller's own record it pushed (a node not known as a
        member announces itself so), whose chain shows an eviction by cascade.
        """
        due = self._tell_due if self._tell_due is not None else {}
        self._tell_due = due
        if due.get(caller, 0) <= now_ms:
            told = eviction_reply(self.mesh, caller, claimed)
            if told is not None:
                if len(due) >= MAX_TOLD_CALLERS:
                    for k in [k for k, t in due.items() if t <= now_ms] or list(due)[:1]:
                        del due[k]
                due.pop(caller, None)
                due[caller] = now_ms + TELL_INTERVAL_MS
                return told
        return Refusal(self.mesh.mesh_id)


def eviction_reply(
    mesh: MeshState, caller: bytes, claimed: Sequence[NodeRecord] = ()
) -> Push | None:
    """The answer to a call of ``caller`` if ``mesh`` holds it as evicted, else None.

    Evicted: in the list of evictions, or by cascade: an eviction voids a
    link of the admission chain of ``claimed``, the caller's own record (if
    it pushed it), a chain whose certificates verify and that ends with it.
    """
    if not mesh.admission:
        return None
    revs = mesh.authority.revoked.get(caller) or _cascade(mesh, caller, claimed)
    if not revs:
        return None
    told: list[Revocation] = []  # the smallest first (``keep``), and at most MAX_KEEP keys
    for r in sorted(revs, key=lambda r: (len(r.keep), r.issued_ms))[:MAX_TOLD]:
        if told and sum(len(t.keep) for t in told) + len(r.keep) > MAX_KEEP:
            break
        told.append(r)
    # how each issuer came to be an admin: the node may not know (made after it lost contact)
    proof: dict[bytes, AdminChange] = {}
    for r in told:
        for p in mesh.authority.admin_proof(r.issuer, r.issued_ms):
            proof.setdefault(p.key, p)
    return Push(mesh.mesh_id, (*told, *proof.values()))


def _cascade(mesh: MeshState, caller: bytes, claimed: Sequence[NodeRecord]) -> list[Revocation]:
    """The evictions voiding a link of ``caller``'s chain in ``claimed`` (each link's smallest).

    None unless that chain is a real one (its certificates verify, the cached
    ones of held chains are not verified again) ending with the caller: a
    stranger could otherwise name any evicted node as its admitter and be sent
    that node's eviction (up to ~130 kB) for a ~1 kB push, from every member,
    under as many keys as it likes.
    """
    rec = next((r for r in claimed if r.wg_key == caller), None)
    if rec is None or not rec.chain or len(rec.chain) > MAX_CHAIN:
        return []
    auth = mesh.authority
    out: list[Revocation] = []
    for c in rec.chain:
        void = [r for r in auth.revoked.get(c.issuer, ()) if voids(r, c)]
        if void:
            out.append(min(void, key=lambda r: (len(r.keep), r.issued_ms)))
    if not out or not _whole(mesh, caller, rec.chain) or not mesh.certs_ok(rec.chain):
        return []
    return out


def _whole(mesh: MeshState, key: bytes, chain: Sequence[Cert]) -> bool:
    """``chain`` links the founder to ``key`` in this mesh (signatures not checked)."""
    prev = mesh.authority.founder
    for c in chain:
        if c.mesh_id != mesh.mesh_id or c.issuer != prev:
            return False
        prev = c.subject
    return prev == key


def concerns(mesh: MeshState, key: bytes, rev: Revocation) -> bool:
    """Is ``rev`` an eviction of ``key``?

    Of it, or of an admitter in its own chain (as ``mesh`` holds its record)
    that voids the link to the next.
    """
    if rev.target == key:
        return True
    rec = mesh.record(key)
    return rec is not None and any(voids(rev, c) for c in rec.chain)


def eviction_of(mesh: MeshState, key: bytes, reply: object) -> Revocation | None:
    """An eviction of ``key`` in ``reply`` (a ``Push``) that verifies against ``mesh``, or None.

    Of ``key`` itself, or by cascade: of an admitter in ``key``'s own chain,
    voiding the link to the next (:func:`concerns`).
    """
    if not isinstance(reply, Push) or not mesh.admission or reply.mesh_id != mesh.mesh_id:
        return None
    auth = mesh.authority
    for item in reply.items[:MAX_TOLD]:
        if type(item) is not Revocation or not concerns(mesh, key, item):
            continue
        try:
            verify_auth(item, mesh.mesh_id)
        except CertError:
            continue
        if auth.was_admin_at(item.issuer, item.issued_ms):
            return item
    return None
