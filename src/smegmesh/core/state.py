"""Mesh state: a state-based CRDT of signed node records and prunes.

Per node key the state holds

* the record with the highest ``(version, signature)`` and
* the prune with the highest ``(target_version, signature)``.

Both are maxima of total orders, so :meth:`MeshState.merge` (per-key max of
both) is commutative, associative and idempotent: a join-semilattice.
Signatures break ties between different items with equal versions (which only
an equivocating owner or pruner can produce), so all replicas pick the same
item. A node is *live* iff its record is not ``left`` and
``record.version > prune.target_version`` (or there is no prune).

Validation is lazy and done once: cheap field checks first, then an item that
would not change the state is dropped *without* verifying its signature (it
cannot affect anything), and only winners are verified. Items already held
(identical signature) are never verified again, nor is an item *object* whose
signature was already verified (noted in the state's bounded
:class:`~smegmesh.core.memo.ItemMemo`, never on the frozen object; the simulator
shares one memo among all its states). :meth:`MeshState.merge` takes
items from another ``MeshState``, which only ever holds validated items, and
does not re-verify them.

Digest tree
-----------
Every key has an *entry hash* ``sha256(key, record version+signature, prune
target_version+signature)`` read as a 256-bit integer.  A fixed-fanout (16)
tree over the key's leading nibbles keeps, for every non-empty node down to
depth :data:`DEPTH`, the sum (mod 2^256) of the entry hashes below it and
their count.  A change updates ``DEPTH + 1`` nodes (never O(N)); the root sum
and count give :meth:`MeshState.digest`.  Sums (rather than XOR) keep equal
entry hashes from cancelling.  The sync protocol (:mod:`smegmesh.core.sync`)
descends this tree into differing nodes only.

Garbage collection (the standard tombstone caveat)
--------------------------------------------------
Prunes and ``left`` records are tombstones; they must stay long enough to
reach every replica. :meth:`MeshState.gc` drops ``left`` records and prunes
(together with the records they kill) whose ``timestamp_ms`` is older than
``now - horizon``. As with Cassandra's ``gc_grace_seconds``, a replica that
was partitioned for longer than the horizon may still hold a killed record
and could resurrect it. To prevent that, once a horizon is known (from the
constructor or the last :meth:`gc`), :meth:`MeshState.apply` rejects
(returns ``False``, no error) tombstones older than the horizon, and records
older than the horizon for keys it has no record of (they are either killed
records whose prune was collected, or stale). Consequence for callers: a live
node must re-sign its record (``evolve``) well within the horizon, and the
horizon must be far longer than the time for a change to reach everyone.
"""

from __future__ import annotations

from collections.abc import Iterable

from smegmesh.core.addressing import validate_mesh_id
from smegmesh.core.authority import Authority
from smegmesh.core.cert import AuthItem, Cert, InviteRevoke
from smegmesh.core.delta import RecordBases
from smegmesh.core.forgery import NOT_CHECKED, ForgeryStop
from smegmesh.core.identity import verify_many
from smegmesh.core.memo import DEFAULT_MEMO_ITEMS, ItemMemo
from smegmesh.core.record import NodeRecord, Prune, RecordError
from smegmesh.core.state_auth import HeldBack, revoke_moot, statements_in_order
from smegmesh.core.state_gate import (
    _AUTH_TYPES,
    BYTES_PER_MEMBER,
    DEFAULT_MAX_MEMBERS,
    MAX_AUTH_ITEMS,
    MAX_CLOCK_SKEW_MS,
    AdmissionGate,
    OverPruneBudget,
    Verifier,
    _job,
)
from smegmesh.core.state_store import (
    DEPTH,
    FANOUT,
    Item,
    _Entry,
    _prune_wins,
    _rec_wins,
    entry_hash,
)

__all__ = [
    "BYTES_PER_MEMBER",
    "DEFAULT_MAX_MEMBERS",
    "DEPTH",
    "FANOUT",
    "MAX_AUTH_ITEMS",
    "MAX_CLOCK_SKEW_MS",
    "Item",
    "MeshState",
    "Verifier",
    "entry_hash",
]


class MeshState(AdmissionGate):
    """The replicated state of one mesh (see the module docstring)."""

    def set_verifier(self, verifier: Verifier) -> None:
        """Verify signatures with ``verifier`` from now on.

        For a state built from items its builder signed itself (a simulation's
        prebuilt state) before it starts receiving anything.
        """
        self._verifier = verifier

    def __init__(
        self,
        mesh_id: str,
        *,
        verifier: Verifier = verify_many,
        gc_horizon_ms: int | None = None,
        admission: bool = False,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_bytes: int | None = None,
        memo: ItemMemo | None = None,
    ) -> None:
        self.mesh_id = validate_mesh_id(mesh_id)
        #: facts already established about item objects (bounded; see core.memo):
        #: the caller's, to share among the states it builds, or this state's own
        #: own memo: room for each member's record, certificate and prune, so the
        #: persist loop's encodings (one per item) stay cached at maxMembers
        self.memo = memo if memo is not None else ItemMemo(max(DEFAULT_MEMO_ITEMS, 3 * max_members))
        self.prune_budget = None
        self._verifier = verifier
        self._horizon: int | None = gc_horizon_ms
        #: records and prunes need admission proofs (see core.authority)
        self.admission = admission
        self._authority = Authority(self.mesh_id)
        self._auth_count = 0
        self._issuer_counts: dict[bytes, int] = {}
        self._pending_auth: dict[bytes, AuthItem] = {}
        self._defer_rebuild = False
        self._rebuild_due = False
        self._good_certs: dict[bytes, Cert | None] = {}
        self._purged: set[bytes] = set()
        #: bounds on what the state holds (records; their signed bytes in total)
        self.max_members = max_members
        self.max_bytes = max_bytes if max_bytes is not None else max_members * BYTES_PER_MEMBER
        self._records = 0
        self._record_bytes = 0
        self._entries: dict[bytes, _Entry] = {}
        # _levels[d][prefix] = [sum of entry hashes, count]
        self._levels: list[dict[int, list[int]]] = [{} for _ in range(DEPTH + 1)]
        self._buckets: dict[int, set[bytes]] = {}  # deepest level: prefix -> keys
        self._version = 0
        self._changes: list[bytes] = []  # keys installed at versions _changes_base+1...
        self._changes_base = 0
        self._refuted: dict[bytes, None] = {}
        self.bases = RecordBases()

    # -- merging ------------------------------------------------------------------

    def apply(self, item: Item, now_ms: int) -> bool:
        """Validate and merge one item; True if the state changed.

        Raises :class:`RecordError` for an invalid item that would have changed
        the state. Items that would not (older, or already held) return False
        without a signature check.
        """
        self._check(item)
        self._check_time(item, now_ms)
        if not self._wins(item) or self._too_old(item, now_ms):
            return False
        self._gate(item)
        if not self._sig_known(item):
            if not self._verifier([_job(item)])[0]:
                raise RecordError("signature", self._sig_reason(item.signature))
            self.memo.note_sig_ok(item)
        self._put(item, now_ms)
        return True

    def apply_many(
        self, items: Iterable[Item], now_ms: int
    ) -> tuple[set[bytes], list[RecordError]]:
        """Validate and merge a batch (signatures verified in one verifier call).

        Invalid items are skipped and returned as errors; returns the set of
        changed keys (including keys an eviction in the batch purged).
        Statements are applied first (a founding record or an eviction must be
        known before the records that depend on it), but certificates (token
        ledger entries) last: they are judged by the records of their issuers
        and subjects (core.state_auth). The first forged signature
        ends the checks: the rest of the batch is refused unchecked
        (:mod:`~smegmesh.core.forgery`; what was installed before it stays).
        """
        errors: list[RecordError] = []
        batch = list(items)
        changed: set[bytes] = set()
        inner = self._verifier
        self._verifier = ForgeryStop(inner)
        statements = [it for it in batch if isinstance(it, _AUTH_TYPES)]
        try:
            self._apply_statements(
                [s for s in statements if type(s) is not Cert], now_ms, changed, errors
            )
            pending = self._admissible(batch, now_ms, errors)
            self._install_winners(pending, changed, errors, now_ms)
            self._apply_statements(
                [s for s in statements if type(s) is Cert], now_ms, changed, errors
            )
            if self._pending_auth and changed:
                changed |= self._take_held_back()
        finally:
            self._verifier = inner
        changed |= self.pop_purged()
        return changed, errors

    def _apply_statements(
        self, batch: list[AuthItem], now_ms: int, changed: set[bytes], errors: list[RecordError]
    ) -> None:
        """Apply authority statements: founding first, then in time order.

        The authority is rebuilt once, after them all.
        """
        if not batch:
            return
        with self._rebuild_once():
            for st in statements_in_order(batch):
                try:
                    if self.apply(st, now_ms):
                        changed.add(st.key)
                except RecordError as e:
                    errors.append(e)

    def _admissible(self, batch: list[Item], now_ms: int, errors: list[RecordError]) -> list[Item]:
        """The batch's records and prunes that pass the checks and the gate and would win."""
        pending: list[Item] = []
        self._preverify_certs(batch, now_ms)
        for it in batch:
            if isinstance(it, _AUTH_TYPES):
                continue
            try:
                self._check(it)
                self._check_time(it, now_ms)
                if self._wins(it) and not self._too_old(it, now_ms):
                    self._gate(it)
                    pending.append(it)
            except RecordError as e:
                errors.append(e)
        return pending

    def _install_winners(
        self, pending: list[Item], changed: set[bytes], errors: list[RecordError], now_ms: int
    ) -> None:
        """Verify and install the best pending item per slot, again after one lost.

        A verified prune over its pruner's budget (``prune_budget``) loses too.
        """
        while pending:
            best: dict[tuple[bytes, bool], Item] = {}
            for it in pending:
                slot = (it.key, isinstance(it, NodeRecord))
                cur = best.get(slot)
                if cur is None or _better(it, cur):
                    best[slot] = it
            cands = list(best.values())
            memo = self.memo
            unknown = [c for c in cands if not memo.sig_ok(c)]
            verdict = dict(
                zip(map(id, unknown), self._verifier([_job(c) for c in unknown]), strict=True)
            )
            oks = [verdict.get(id(c), True) for c in cands]
            failed: set[tuple[bytes, bool]] = set()
            for c, ok in zip(cands, oks, strict=True):
                if ok:
                    memo.note_sig_ok(c)
                if ok and (type(c) is not Prune or self._prune_allowed(c, now_ms)):
                    self._put(c, now_ms)
                    changed.add(c.key)
                    continue
                if ok:
                    errors.append(OverPruneBudget())
                else:
                    errors.append(RecordError("signature", self._sig_reason(c.signature)))
                failed.add((c.key, isinstance(c, NodeRecord)))
            tried = {id(c) for c in cands}
            pending = [
                it
                for it in pending
                if (it.key, isinstance(it, NodeRecord)) in failed
                and id(it) not in tried
                and self._wins(it)
            ]
            if pending and isinstance(self._verifier, ForgeryStop) and self._verifier.forged:
                # the rest goes unchecked (core.forgery): at once, not a round per copy
                errors.extend(RecordError("signature", NOT_CHECKED) for _ in pending)
                return

    def merge(self, other: MeshState) -> set[bytes]:
        """Join ``other`` into this state; returns the keys that changed.

        ``other`` holds only validated items, so signatures are not re-checked
        (admission rules are, when this state enforces them).
        """
        if other.mesh_id != self.mesh_id:
            raise ValueError(f"cannot merge mesh {other.mesh_id!r} into {self.mesh_id!r}")
        changed = self._merge_statements(other, certs=False)
        for key, oe in other._entries.items():
            if oe.auth is not None:
                continue
            e = self._entries.get(key)
            rec = None if e is None else e.record
            pr = None if e is None else e.prune
            new_rec = oe.record if oe.record is not None and _rec_wins(oe.record, rec) else rec
            new_pr = oe.prune if oe.prune is not None and _prune_wins(oe.prune, pr) else pr
            if (
                new_pr is not pr
                and new_pr is not None
                and new_rec is not None
                and new_rec.version > new_pr.target_version
            ):
                new_pr = pr  # moot: a newer record is held (see StateStore._install)
            if self.admission:
                a = self._authority
                if (
                    new_rec is not rec
                    and new_rec is not None
                    and a.check_chain(new_rec.wg_key, new_rec.chain) is not None
                ):
                    new_rec = rec
                if (
                    new_pr is not pr
                    and new_pr is not None
                    and a.check_chain(new_pr.by_wg_key, new_pr.by_chain) is not None
                ):
                    new_pr = pr
            if new_rec is not rec or new_pr is not pr:
                self._install(key, new_rec, new_pr)
                changed.add(key)
        changed |= self._merge_statements(other, certs=True)
        if self._pending_auth:
            changed |= self._take_held_back()
        return changed | self.pop_purged()

    def _merge_statements(self, other: MeshState, *, certs: bool) -> set[bytes]:
        """Take ``other``'s statements we lack that pass our gate (no signature checks).

        ``certs``: the certificates (after the records), else the rest (before).
        """
        theirs = [
            e.auth
            for k, e in other._entries.items()
            if e.auth is not None and (type(e.auth) is Cert) == certs and k not in self._entries
        ]
        changed: set[bytes] = set()
        with self._rebuild_once():
            for st in statements_in_order(theirs):
                try:
                    self._gate_statement(st)
                except (HeldBack, RecordError):
                    continue
                self._put(st)
                changed.add(st.key)
        return changed

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: the node's own times move with it.

        The prune budget's and the delta bases' (``engine.ClockStepped``); the
        items' signed times stay as they are.
        """
        if self.prune_budget is not None:
            self.prune_budget.clock_stepped(delta_ms)
        self.bases.clock_stepped(delta_ms)

    def gc(self, now_ms: int, horizon_ms: int) -> int:
        """Drop tombstones older than ``now_ms - horizon_ms``; returns items dropped.

        Drops ``left`` records and prunes, with the records the prunes kill, the
        token ledger entries (admission certificates) of tokens that expired
        before the horizon, and invitation revocations once every token they
        can revoke has (a token lives at most a year); then the ledger entries
        and revocations of members that no held record vouches for any more
        (core.state_auth). Evictions, admin changes
        and founding records are never dropped. Remembers the horizon for
        :meth:`apply` (see the module docstring).
        """
        if horizon_ms < 0:
            raise ValueError("horizon must be >= 0")
        self._horizon = horizon_ms
        cutoff = now_ms - horizon_ms
        dropped = 0
        ledger_dropped = records_dropped = False
        for key, e in list(self._entries.items()):
            if e.auth is not None:
                a = e.auth
                if (isinstance(a, Cert) and 0 < a.token_expiry_ms < cutoff) or (
                    isinstance(a, InviteRevoke) and revoke_moot(a, cutoff)
                ):
                    self._drop_statement(key, a)
                    dropped += 1
                    ledger_dropped = True
                continue
            rec, pr = e.record, e.prune
            if pr is not None and pr.timestamp_ms < cutoff:
                pr = None
                dropped += 1
                if rec is not None and rec.version <= e.prune.target_version:  # type: ignore[union-attr]
                    rec = None
                    dropped += 1
            if rec is not None and rec.left and rec.timestamp_ms < cutoff:
                rec = None
                dropped += 1
            if rec is not e.record or pr is not e.prune:
                self._install(key, rec, pr)
                records_dropped = True
        # the records that vouched for some ledger entries; rebuilds if it drops any
        unvouched = self._drop_unvouched() if records_dropped else 0
        if ledger_dropped and not unvouched:
            self._authority = Authority.build(self.mesh_id, self._iter_auth())
        return dropped + unvouched

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MeshState):
            return NotImplemented
        return self.mesh_id == other.mesh_id and {k: e.h for k, e in self._entries.items()} == {
            k: e.h for k, e in other._entries.items()
        }

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MeshState({self.mesh_id!r}, {len(self)} keys, digest={self.digest().hex()[:16]})"


def _better(a: Item, b: Item) -> bool:
    if isinstance(a, NodeRecord) and isinstance(b, NodeRecord):
        return (a.version, a.signature) > (b.version, b.signature)
    if isinstance(a, Prune) and isinstance(b, Prune):
        return (a.target_version, a.signature) > (b.target_version, b.signature)
    raise TypeError("compare items of one kind")
