"""Mesh state admission: field and time checks, the admission gate, capacity, purges.

The validation half of :class:`~smegmesh.core.state.MeshState`: which items
may enter (field checks, clock skew, the GC horizon, bounded capacity,
admission chains and membership proofs, batched certificate verification),
how authority statements update the :class:`~smegmesh.core.authority.Authority`,
and the purge of items an eviction made invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

from smegmesh.core.authority import Authority
from smegmesh.core.cert import (
    AdminChange,
    AliasReserve,
    AuthItem,
    Cert,
    CertError,
    Founding,
    InviteRevoke,
    PolicyChange,
    Revocation,
    check_auth_fields,
)
from smegmesh.core.forgery import ForgeryStop
from smegmesh.core.memo import ItemMemo
from smegmesh.core.prune_budget import PruneBudget
from smegmesh.core.record import (
    NodeRecord,
    Prune,
    RecordError,
    Role,
    check_prune_fields,
    check_record_fields,
)
from smegmesh.core.state_auth import MAX_AUTH_ITEMS, HeldBack, StatementGate, revoke_moot
from smegmesh.core.state_store import Item, _prune_wins, _rec_wins, _size

__all__ = [
    "BYTES_PER_MEMBER",
    "DEFAULT_MAX_MEMBERS",
    "MAX_AUTH_ITEMS",
    "MAX_CLOCK_SKEW_MS",
    "OVER_PRUNE_BUDGET",
    "AdmissionGate",
    "HeldBack",
    "OverPruneBudget",
    "Verifier",
    "senders_faults",
]

_AUTH_TYPES = (
    Founding,
    Cert,
    AdminChange,
    Revocation,
    InviteRevoke,
    AliasReserve,
    PolicyChange,
)
#: Default bound on the records one mesh holds (``maxMembers``).
DEFAULT_MAX_MEMBERS = 10_000
#: Default share of the total record bytes per member (records are at most
#: ``MAX_RECORD_BYTES``; a few bridges with long route lists fit in the total).
BYTES_PER_MEMBER = 8 * 1024
_T = TypeVar("_T", NodeRecord, Prune)
Verifier = Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]]
#: Why a valid prune is refused for its pruner's budget (core.prune_budget).
OVER_PRUNE_BUDGET = "over its pruner's budget of prunes (it comes again later)"


class OverPruneBudget(RecordError):
    """A valid prune refused for its pruner's budget: no fault of the member relaying it."""

    def __init__(self) -> None:
        super().__init__("by_wg_key", OVER_PRUNE_BUDGET)


def senders_faults(errors: Iterable[RecordError]) -> list[RecordError]:
    """The refusals that are the sending member's fault (garbage, forgeries, ...).

    A prune held back by its pruner's budget is not: an honest member relays
    the prunes it took, and they come again once the budget allows. Nor is a
    statement held back until its issuer is known to qualify (core.state_auth).
    """
    return [e for e in errors if not isinstance(e, (OverPruneBudget, HeldBack))]


#: Items stamped (or versioned) further ahead of our clock than this are refused.
MAX_CLOCK_SKEW_MS = 10 * 60 * 1000


class AdmissionGate(StatementGate):
    """Checks and admission rules of a mesh state, over its :class:`StateStore`."""

    admission: bool
    max_members: int
    max_bytes: int
    _verifier: Verifier
    #: facts about item objects (fields checked, signature verified, size): the
    #: caller's :class:`~smegmesh.core.memo.ItemMemo`, shared by the states it builds
    memo: ItemMemo
    #: prunes taken per pruner (core.prune_budget; None: no bound, as in a
    #: state no node owns); the node owning the state sets it
    prune_budget: PruneBudget | None
    _horizon: int | None
    #: verified admission statements by key: the signatures checked once, and
    #: the one object of each certificate every held chain points at
    _good_certs: dict[bytes, Cert | None]

    # ------------------------------------------------------------------ updates

    def _too_old(self, item: Item, now_ms: int) -> bool:
        if self._horizon is None:
            return False
        if isinstance(item, Cert):  # a token ledger entry matters until its token expires
            return 0 < item.token_expiry_ms < now_ms - self._horizon
        if isinstance(item, InviteRevoke):
            return revoke_moot(item, now_ms - self._horizon)
        if isinstance(item, _AUTH_TYPES):
            return False
        if item.timestamp_ms >= now_ms - self._horizon:
            return False
        if isinstance(item, Prune):
            return True
        return item.left or self.get(item.wg_key) is None

    @staticmethod
    def _check_time(item: Item, now_ms: int) -> None:
        """Refuse items from the future.

        A prune with a huge ``target_version`` (or a record with a huge version)
        would otherwise win for ever.
        """
        limit = now_ms + MAX_CLOCK_SKEW_MS
        if item.timestamp_ms > limit:
            raise RecordError("timestamp_ms", "is in the future (clock skew too large)")
        if isinstance(item, _AUTH_TYPES):
            return
        version = item.target_version if isinstance(item, Prune) else item.version
        if version > limit:
            raise RecordError("version", "is in the future (clock skew too large)")

    def _check(self, item: Item) -> bytes:
        """Field checks (no signature); returns the item's key."""
        if type(item) is NodeRecord:
            check_record_fields(item, self.mesh_id, memo=self.memo)
            return item.wg_key
        if type(item) is Prune:
            check_prune_fields(item, self.mesh_id, memo=self.memo)
            return item.target
        if isinstance(item, _AUTH_TYPES):
            try:
                check_auth_fields(item, self.mesh_id)
            except CertError as e:
                raise RecordError(e.field, e.message) from None
            return item.key
        raise RecordError("item", f"not a NodeRecord, Prune or statement: {type(item).__name__}")

    def _wins(self, item: Item) -> bool:
        e = self._entries.get(item.key)
        if isinstance(item, NodeRecord):
            return _rec_wins(item, None if e is None else e.record)
        if isinstance(item, Prune):
            if e is not None and e.record is not None and e.record.version > item.target_version:
                return False  # moot: a newer record is held (see StateStore._install)
            return _prune_wins(item, None if e is None else e.prune)
        return e is None

    def _put(self, item: Item, now_ms: int | None = None) -> None:
        e = self._entries.get(item.key)
        rec = None if e is None else e.record
        pr = None if e is None else e.prune
        if isinstance(item, NodeRecord):
            if rec is not None and now_ms is not None:
                self.bases.note(rec, item, now_ms)  # a base for deltas (core.delta)
            self._install(item.wg_key, self._shared(item), pr)
        elif isinstance(item, Prune):
            self._install(item.target, rec, self._shared_prune(item, rec))
        else:
            self._put_statement(item)

    def _share_chain(self, chain: tuple[Cert, ...]) -> tuple[Cert, ...]:
        """``chain`` with the held object of each certificate (``chain`` itself if it has them).

        A member's chain is its admitter's and one certificate more: objects
        shared, 3,000 chains hold ~3,000 certificates, not one per level of
        each (a daemon decodes every record from its own bytes).
        """
        good = self._good_certs
        shared = tuple(h if type(h := good.get(c.key)) is Cert else c for c in chain)
        if all(a is b for a, b in zip(shared, chain, strict=True)):
            return chain
        return shared

    def _shared(self, rec: NodeRecord) -> NodeRecord:
        """``rec`` pointing at the held certificates (equal by value: same signature)."""
        chain = self._share_chain(rec.chain)
        return rec if chain is rec.chain else self._replaced(rec, replace(rec, chain=chain))

    def _replaced(self, old: _T, new: _T) -> _T:
        """``new`` (equal to ``old``) with what the memo knows of ``old``: checked, verified.

        Lost, every held record was checked and verified again when it came
        back inside a prune by reference (review, twenty-first session: a push
        of forged elided prunes cost two checks per prune, not one in all).
        """
        self.memo.carry(old, new)
        return new

    def _shared_prune(self, prune: Prune, held: NodeRecord | None) -> Prune:
        """``prune`` pointing at the held record it carries and the held certificates."""
        tr = prune.target_record
        if tr is not None and held is not None and held.signature == tr.signature:
            self.memo.carry(tr, held)
            tr = held  # signatures equal: the same signed record
        elif tr is not None:
            tr = self._shared(tr)
        by = self._share_chain(prune.by_chain)
        if tr is prune.target_record and by is prune.by_chain:
            return prune
        return self._replaced(prune, replace(prune, target_record=tr, by_chain=by))

    # -- admission (admission mode) -----------------------------------------------

    def _check_capacity(self, rec: NodeRecord) -> None:
        """Bounded state: at most ``max_members`` records and ``max_bytes`` of them."""
        e = self._entries.get(rec.wg_key)
        old = None if e is None else e.record
        if old is None and self._records >= self.max_members:
            raise RecordError("record", f"the mesh holds {self.max_members} nodes (maxMembers)")
        grow = _size(rec) - _size(old)
        if grow > 0 and self._record_bytes + grow > self.max_bytes:
            raise RecordError(
                "record", f"the mesh's records would exceed {self.max_bytes} bytes in total"
            )

    def _gate(self, item: Item) -> None:
        """Admission rules: raise :class:`RecordError` unless ``item`` may enter.

        Records need an admission chain, prunes a member as pruner and the
        target's own signed record (a prune can never name a version its
        target did not sign: no forged, future or non-member prunes).
        """
        if isinstance(item, NodeRecord):
            self._check_capacity(item)
        if isinstance(item, _AUTH_TYPES):
            self._gate_statement(item)
            return
        if not self.admission:
            # a proof is about another mesh, whose authority this one's lack
            # does not waive: routing takes its first hop on it (a member of an
            # old-style mesh copied a bridge's proof and took its traffic)
            if isinstance(item, NodeRecord):
                self._check_proofs(item)
            return
        if isinstance(item, NodeRecord):
            self._check_member(item.wg_key, item.chain, "chain")
            self._check_proofs(item)
            if item.devices:  # sponsored devices (issue 18): certs signed by the owner
                self._verify_certs([d.cert for d in item.devices], "devices")
            return
        tr = item.target_record
        if tr is None:
            raise RecordError("target_record", "a prune must carry its target's signed record")
        if item.by_wg_key == item.target:
            raise RecordError("by_wg_key", "a node does not prune itself (it leaves)")
        self._check_member(item.by_wg_key, item.by_chain, "by_chain")
        if not self.memo.sig_ok(tr):
            if not self._verifier([_job(tr)])[0]:
                raise RecordError("target_record", self._sig_reason(tr.signature))
            self.memo.note_sig_ok(tr)

    def _prune_allowed(self, prune: Prune, now_ms: int) -> bool:
        """Whether a verified ``prune`` is within its pruner's budget (core.prune_budget).

        A peer's prunes of its own clients are not counted (it is their judge,
        and may lose many at once); any pruner's prunes of a client are taken
        at most once a gap (a client refutes slowly: it cannot be called), and
        those of all the members other than its judge once a gap together.
        """
        budget = self.prune_budget
        if budget is None:
            return True
        target = prune.target_record or self.record(prune.target)
        client = target is not None and target.role == Role.CLIENT
        # a client's record only: a peer's may still name the peer it had as a client
        judge = client and target is not None and target.assigned_peer == prune.by_wg_key
        return budget.take(prune.by_wg_key, prune.target, now_ms, client=client, judge=judge)

    def _sig_reason(self, signature: bytes, checked: str = "invalid signature") -> str:
        """Why an item whose ``signature`` failed is refused (see :mod:`core.forgery`)."""
        v = self._verifier
        return v.reason(signature, checked) if isinstance(v, ForgeryStop) else checked

    def _check_member(self, key: bytes, chain: Sequence[Cert], field: str) -> None:
        reason = self._authority.check_chain(key, chain)
        if reason is not None:
            raise RecordError(field, reason)
        self._verify_certs(chain, field)

    def certs_ok(self, certs: Sequence[Cert]) -> bool:
        """Whether each of ``certs`` is signed by its issuer (those verified before: cached).

        Outside ``apply_many``, so checked as it checks a message: the first
        forged signature ends the checks (core.forgery), or a forged chain cost
        a check per certificate, at each refused push (``core.evicted``).
        """
        inner = self._verifier
        if not isinstance(inner, ForgeryStop):
            self._verifier = ForgeryStop(inner)
        try:
            self._verify_certs(certs, "chain")
        except RecordError:
            return False
        finally:
            self._verifier = inner
        return True

    def _verify_certs(self, certs: Sequence[AuthItem], field: str) -> None:
        todo = [c for c in certs if c.key not in self._good_certs]
        if not todo:
            return
        oks = self._verifier([(c.signer, c.signed_payload(), c.signature) for c in todo])
        if not all(oks):
            bad = next(c for c, ok in zip(todo, oks, strict=True) if not ok)
            raise RecordError(
                field, self._sig_reason(bad.signature, "invalid admission certificate signature")
            )
        self._note_good(todo)

    def _note_good(self, verified: Sequence[AuthItem]) -> None:
        """Remember statements whose signatures verified.

        The object of this mesh's certificates is kept (the one every held
        chain points at), the key alone of the rest (other meshes' proofs: a
        member can send many; review, twenty-first session).
        """
        good = self._good_certs
        if len(good) > 4 * MAX_AUTH_ITEMS:
            good.clear()
        for c in verified:
            good[c.key] = c if type(c) is Cert and c.mesh_id == self.mesh_id else None

    def _preverify_certs(self, batch: Sequence[Item], now_ms: int) -> None:
        """Verify the unknown admission certs of a batch's records in one verifier call.

        Only for records that would enter (they win and their chain is
        structurally valid), so nothing is verified that :meth:`_gate` would
        not verify; the gate then finds the certs cached. A bad cert is simply
        not cached: the gate verifies that record's chain again and refuses it.
        One call lets a parallel verifier work on a whole page (one call per
        record left it nothing to parallelise).
        """
        if not self.admission:
            return
        todo: dict[bytes, Cert] = {}
        for it in batch:
            if type(it) is not NodeRecord or not it.chain:
                continue
            try:
                self._check(it)
                self._check_time(it, now_ms)
            except RecordError:
                continue
            if not self._wins(it) or self._too_old(it, now_ms):
                continue
            if self._authority.check_chain(it.wg_key, it.chain) is not None:
                continue
            for c in it.chain:
                if c.key not in self._good_certs:
                    todo.setdefault(c.key, c)
        if len(todo) < 2:
            return
        certs = list(todo.values())
        oks = self._verifier([(c.signer, c.signed_payload(), c.signature) for c in certs])
        self._note_good([c for c, ok in zip(certs, oks, strict=True) if ok])

    def _check_proofs(self, rec: NodeRecord) -> None:
        for p in rec.proofs:
            other = Authority.build(p.founding.mesh_id, [p.founding])
            reason = other.check_chain(rec.wg_key, p.chain)
            if reason is not None:
                raise RecordError("proofs", f"mesh {p.founding.mesh_id}: {reason}")
            self._verify_certs((p.founding, *p.chain), "proofs")

    def _sig_known(self, item: Item) -> bool:
        """Whether ``item``'s signature is known good: the memo, or a chain's verified cert.

        A certificate's key is a hash of its signed form and signature: a
        ledger entry whose certificate a held chain carries is not verified again.
        """
        if self.memo.sig_ok(item):
            return True
        return type(item) is Cert and type(self._good_certs.get(item.key)) is Cert

    def _verify_statement(self, item: AuthItem) -> bool:
        """Whether ``item``'s signature verifies (noted in the memo)."""
        if self._sig_known(item):
            return True
        if not self._verifier([_job(item)])[0]:
            return False
        self.memo.note_sig_ok(item)
        return True


def _job(item: Item) -> tuple[bytes, bytes, bytes]:
    if isinstance(item, NodeRecord):
        return (item.sign_key, item.signed_payload(), item.signature)
    if isinstance(item, Prune):
        return (item.by_sign_key, item.signed_payload(), item.signature)
    return (item.signer, item.signed_payload(), item.signature)
