"""Who is in a mesh and who decides: evaluation of its authority statements. Pure.

:class:`Authority` is a pure function of the set of (signature-checked)
statements of :mod:`smegmesh.core.cert` that a replica holds. Because the set
only grows (until garbage collection of expired token ledgers) and the
evaluation depends on nothing else, every replica holding the same statements
reaches the same verdicts: the CRDT property is kept.

Rules
-----
* The founder (creator) of the mesh is an admin from the start. Admin
  changes, evictions and alias reservations are replayed in ``(issued_ms,
  key)`` order; each takes effect only if its issuer is an admin at that
  point. An evicted admin stops being one. An invitation revocation
  counts if its issuer issued the token, or was an admin at the time the
  revocation carries (:meth:`Authority.was_admin_at`).
* A node is a member only with an admission *chain*: certs
  ``founder -> n1 -> ... -> node``, each signed by the previous link's subject
  (the first by the founder). A link's issuer must be allowed to admit: the
  founder, anyone who was ever an admin, or a node whose own cert says
  ``may_admit`` (set by the admitter from the mesh policy: ``members``: all;
  ``peers``: peers only; ``admins``: none).
* Eviction: no link may name an evicted subject; a link *issued* by an evicted
  node is valid only if every eviction of that node kept its subject
  (``keep``, not ``cascade``). So an evicted node cannot come back with a new
  record, an old token, a restart, or a new identity admitted by itself.
* An admin may change the invite policy (:class:`PolicyChange`); a chain link
  is judged by the policy in force when it was issued (``policy_at``): under
  ``members`` anyone admits, under ``admins`` only admins, under ``peers`` the
  nodes whose cert says ``may_admit`` (set from their role when admitted).
* Admission order (for aliases): the issue time of the node's last cert; the
  founder's is the mesh's creation. Ties: by key.
* ``named``: the founder and every node an admin change by a named node made
  an admin, whenever dated and whether or not it took effect. It only grows
  as statements are added, so a state can keep a statement by its issuer
  being named (:mod:`smegmesh.core.state_auth`) and every replica keeps the
  same ones whatever the order they came in; the replay above decides what
  each one does.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Sequence
from dataclasses import dataclass, field

from smegmesh.core.cert import (
    MAX_CHAIN,
    AdminChange,
    AliasReserve,
    AuthItem,
    Cert,
    Founding,
    InviteRevoke,
    Policy,
    PolicyChange,
    Revocation,
)

__all__ = ["Authority", "alias_owners", "copy_authority", "voids"]

_ZERO = bytes(32)


def voids(rev: Revocation, link: Cert) -> bool:
    """Does ``rev`` void ``link`` of a chain (see :meth:`Authority.check_chain`)?

    It evicted the link's issuer, and with it the nodes that issuer admitted
    (``cascade``), or all but those it kept (``keep``).
    """
    return rev.target == link.issuer and (rev.cascade or link.subject not in rev.keep)


@dataclass
class Authority:
    """The authority of one mesh as derived from its statements."""

    mesh_id: str
    founding: Founding | None = None
    admins: set[bytes] = field(default_factory=set)
    revoked: dict[bytes, list[Revocation]] = field(default_factory=dict)
    #: token hash -> the subjects of ``token_certs`` with it (an index of it, by hash)
    token_subjects: dict[bytes, set[bytes]] = field(default_factory=dict)
    invite_revokes: dict[bytes, list[InviteRevoke]] = field(default_factory=dict)
    reservations: dict[str, bytes] = field(default_factory=dict)
    #: invite policy changes by admins after the founding: (issued_ms, policy), in order
    policy_changes: list[tuple[int, Policy]] = field(default_factory=list)
    #: (token hash, subject, issuer) -> the latest certificate that issuer gave
    #: that subject with that token: a join sent again gets it back, not a new one
    token_certs: dict[tuple[bytes, bytes, bytes], Cert] = field(default_factory=dict)
    #: the founder and the subjects of admin changes by named nodes (see the module docstring)
    named: set[bytes] = field(default_factory=set)
    #: when each node was an admin: [start, end) spans from the replay
    admin_spans: dict[bytes, list[tuple[int, int]]] = field(default_factory=dict)
    #: (subject, start) -> the admin change that opened that span (not the founder's first)
    openers: dict[tuple[bytes, int], AdminChange] = field(default_factory=dict)

    @classmethod
    def build(cls, mesh_id: str, items: Iterable[AuthItem]) -> Authority:
        a = cls(mesh_id)
        timeline: list[AdminChange | Revocation | AliasReserve | PolicyChange] = []
        promotions: list[AdminChange] = []
        for it in items:
            if isinstance(it, Founding):
                if it.mesh_id == mesh_id:
                    a.founding = it
            elif isinstance(it, Cert):
                note_token_cert(a, it)
            elif isinstance(it, InviteRevoke):
                a.invite_revokes.setdefault(it.token_hash, []).append(it)
            else:
                timeline.append(it)
                if isinstance(it, AdminChange) and it.admin:
                    promotions.append(it)
        if a.founding is None:
            return a
        a.named = _named(a.founding.founder, promotions)
        a.admins = {a.founding.founder}
        spans = _Spans(a.founding.founder, a.founding.created_ms)
        timeline.sort(key=lambda s: (s.issued_ms, s.key))
        for s in timeline:
            if s.issuer not in a.admins:
                continue
            if isinstance(s, AdminChange):
                if s.admin and s.subject not in a.revoked:
                    if s.subject not in a.admins:
                        spans.open(s.subject, s.issued_ms)
                        a.openers[(s.subject, s.issued_ms)] = s
                    a.admins.add(s.subject)
                elif not s.admin:
                    spans.close(s.subject, s.issued_ms)
                    a.admins.discard(s.subject)
            elif isinstance(s, Revocation):
                a.revoked.setdefault(s.target, []).append(s)
                spans.close(s.target, s.issued_ms)
                a.admins.discard(s.target)
            elif isinstance(s, PolicyChange):
                a.policy_changes.append((s.issued_ms, s.policy))
            elif s.holder == _ZERO:
                a.reservations.pop(s.alias, None)
            else:
                a.reservations[s.alias] = s.holder
        a.admin_spans = spans.done()
        return a

    # ------------------------------------------------------------------ queries

    @property
    def ever_admins(self) -> KeysView[bytes]:
        """Every node that was ever an admin (the founder included)."""
        return self.admin_spans.keys()

    @property
    def policy(self) -> Policy:
        if self.policy_changes:
            return self.policy_changes[-1][1]
        return self.founding.policy if self.founding is not None else Policy.PEERS

    def policy_at(self, t_ms: int) -> Policy:
        """The invite policy in force at ``t_ms`` (the founding's, then admins' changes)."""
        p = self.founding.policy if self.founding is not None else Policy.PEERS
        for when, policy in self.policy_changes:
            if when > t_ms:
                break
            p = policy
        return p

    def member_may_admit(self, key: bytes, chain: Sequence[Cert], t_ms: int) -> bool:
        """May the member ``key`` with admission ``chain`` admit (and invite) at ``t_ms``?"""
        return self.issuer_may_admit(key, bool(chain) and chain[-1].may_admit, t_ms)

    def issuer_may_admit(self, issuer: bytes, flag: bool, t_ms: int) -> bool:
        """May ``issuer`` (whose own cert says ``flag``) admit at ``t_ms``?

        Admins always may. Otherwise the policy in force then decides:
        ``members``: anyone; ``admins``: no one else; ``peers``: the flag its
        admitter set from its role (a peer's cert says it may admit).
        """
        if issuer in self.ever_admins:  # the founder's span opens at the founding
            return True
        p = self.policy_at(t_ms)
        return p == Policy.MEMBERS or (p == Policy.PEERS and flag)

    @property
    def founder(self) -> bytes | None:
        return self.founding.founder if self.founding is not None else None

    def is_admin(self, key: bytes) -> bool:
        return key in self.admins

    def is_revoked(self, key: bytes) -> bool:
        return key in self.revoked

    def may_admit_by_policy(self, role_is_peer: bool) -> bool:
        """The ``may_admit`` flag an admitter writes into a new node's cert."""
        p = self.policy
        return p == Policy.MEMBERS or (p == Policy.PEERS and role_is_peer)

    def check_chain(self, key: bytes, chain: Sequence[Cert]) -> str | None:
        """None if ``chain`` proves ``key``'s admission, else why not.

        Signatures are not checked here (the state verifies each cert once).
        """
        f = self.founding
        if f is None:
            return "the mesh's founding record is not known"
        if key in self.revoked:
            return "evicted"
        if not chain:
            return None if key == f.founder else "no admission proof"
        if len(chain) > MAX_CHAIN:
            return f"admission chain longer than {MAX_CHAIN}"
        prev, prev_may, prev_ms = f.founder, True, f.created_ms
        for c in chain:
            if c.mesh_id != self.mesh_id:
                return "admission proof is for another mesh"
            if c.issuer != prev:
                return "admission chain is broken"
            if not self.issuer_may_admit(prev, prev_may, c.issued_ms):
                return "admitted by a node that may not admit"
            if c.issued_ms < prev_ms:
                return "admission predates its admitter's"
            revs = self.revoked.get(c.issuer)
            if revs and any(voids(r, c) for r in revs):
                return "admitted by an evicted node"
            prev, prev_may, prev_ms = c.subject, c.may_admit, c.issued_ms
        if prev != key:
            return "admission proof is for another node"
        return None

    def chain_facts(self) -> tuple[object, ...]:
        """Everything :meth:`check_chain` depends on: equal facts, equal verdicts.

        The founding record, every eviction (a second one of an evicted node,
        with ``cascade``, changes the verdict on the nodes the first kept), who
        was ever an admin, and the policy changes.
        """
        return (
            self.founding,
            {k: tuple(v) for k, v in self.revoked.items()},
            frozenset(self.ever_admins),
            tuple(self.policy_changes),
        )

    def admission_ms(self, key: bytes, chain: Sequence[Cert]) -> int:
        """When ``key`` was admitted (for "first admitted keeps the alias")."""
        if chain:
            return chain[-1].issued_ms
        return self.founding.created_ms if self.founding is not None else 0

    def was_admin_at(self, key: bytes, t_ms: int) -> bool:
        """Was ``key`` an admin at ``t_ms`` (not yet dropped or evicted)?"""
        return any(start <= t_ms < end for start, end in self.admin_spans.get(key, ()))

    def admin_proof(self, key: bytes, t_ms: int) -> list[AdminChange]:
        """The admin changes that made ``key`` an admin at ``t_ms``, from the founder's on.

        Each one's issuer was an admin when it was issued by the one before
        (the first's: the founder). Empty if ``key`` is the founder in its
        founding span, or was no admin then. At most :data:`MAX_CHAIN` (an
        evicted node is shown them: ``core.evicted``).
        """
        out: list[AdminChange] = []
        while len(out) < MAX_CHAIN:
            span = next((s for s, e in self.admin_spans.get(key, ()) if s <= t_ms < e), None)
            opener = self.openers.get((key, span)) if span is not None else None
            if opener is None or opener in out:
                break
            out.append(opener)
            key, t_ms = opener.issuer, opener.issued_ms
        return out[::-1]

    def token_revoked(self, token_hash: bytes, issuer: bytes | None) -> bool:
        """Revoked by its issuer, or by an admin that was one when it revoked.

        An admin dropped or evicted (its key stolen, say) revokes nothing
        after that (review of the authority: any revocation of anyone who was
        ever an admin counted, whenever dated).
        """
        return any(
            r.issuer == issuer or self.was_admin_at(r.issuer, r.issued_ms)
            for r in self.invite_revokes.get(token_hash, ())
        )


_FOREVER = 2**63


class _Spans:
    """The [start, end) spans in which each node is an admin, built in replay order."""

    def __init__(self, founder: bytes, created_ms: int) -> None:
        self._spans: dict[bytes, list[list[int]]] = {founder: [[created_ms, _FOREVER]]}

    def open(self, key: bytes, t_ms: int) -> None:
        self._spans.setdefault(key, []).append([t_ms, _FOREVER])

    def close(self, key: bytes, t_ms: int) -> None:
        spans = self._spans.get(key)
        if spans and spans[-1][1] == _FOREVER:
            spans[-1][1] = t_ms

    def done(self) -> dict[bytes, list[tuple[int, int]]]:
        return {k: [(a, b) for a, b in v] for k, v in self._spans.items()}


def _named(founder: bytes, promotions: Sequence[AdminChange]) -> set[bytes]:
    """The founder and, transitively, whom admin changes by named nodes made admins."""
    by_issuer: dict[bytes, list[bytes]] = {}
    for p in promotions:
        by_issuer.setdefault(p.issuer, []).append(p.subject)
    named, todo = {founder}, [founder]
    while todo:
        for subject in by_issuer.get(todo.pop(), ()):
            if subject not in named:
                named.add(subject)
                todo.append(subject)
    return named


def alias_owners(
    claims: Iterable[tuple[bytes, str, Sequence[Cert]]], authority: Authority | None
) -> dict[str, bytes]:
    """Alias -> key of the node that owns it; ``claims``: (key, alias, chain) per node.

    With an authority (a mesh with a founding record): an alias an admin
    reserved belongs to its holder (when the holder claims it); otherwise the
    claimant admitted *first* keeps it (ties: lowest key). Admission times
    come from certificates signed by the admitting member, so a member cannot
    take a name by grinding keys or back-dating its own record. Without one
    (meshes of older versions): the highest rendezvous score, as before.
    """
    from smegmesh.core.hashing import score

    best: dict[str, tuple[int, bytes]] = {}
    reserved = authority.reservations if authority is not None else {}
    use_order = authority is not None and authority.founding is not None
    for key, alias, chain in claims:
        if not alias:
            continue
        a = alias.lower()
        holder = reserved.get(a)
        if holder is not None and holder != key:
            continue  # reserved for another node
        if holder == key:
            rank = -1
        elif use_order:
            assert authority is not None
            rank = authority.admission_ms(key, chain)
        else:
            rank = -int.from_bytes(score(a.encode(), key), "big")
        cur = best.get(a)
        if cur is None or (rank, key) < cur:
            best[a] = (rank, key)
    return {a: k for a, (_, k) in best.items()}


def copy_authority(a: Authority) -> Authority:
    """An independent copy (replicas of a simulation start from one state)."""
    return Authority(
        a.mesh_id,
        a.founding,
        set(a.admins),
        {k: list(v) for k, v in a.revoked.items()},
        {k: set(v) for k, v in a.token_subjects.items()},
        {k: list(v) for k, v in a.invite_revokes.items()},
        dict(a.reservations),
        list(a.policy_changes),
        dict(a.token_certs),
        set(a.named),
        {k: list(v) for k, v in a.admin_spans.items()},
        dict(a.openers),
    )


def note_token_cert(a: Authority, cert: Cert) -> None:
    """The token ledger: ``cert``'s subject was admitted with its token (if any)."""
    if not cert.token_hash:
        return
    a.token_subjects.setdefault(cert.token_hash, set()).add(cert.subject)
    slot = (cert.token_hash, cert.subject, cert.issuer)
    held = a.token_certs.get(slot)
    if held is None or cert.issued_ms > held.issued_ms:
        a.token_certs[slot] = cert
