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
signature was already verified (noted on the frozen object itself). :meth:`MeshState.merge` takes
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

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from smegmesh.core.addressing import validate_mesh_id
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
from smegmesh.core.identity import verify_many
from smegmesh.core.record import (
    NodeRecord,
    Prune,
    RecordError,
    check_prune_fields,
    check_record_fields,
)

__all__ = ["DEPTH", "FANOUT", "MAX_AUTH_ITEMS", "Item", "MeshState", "Verifier", "entry_hash"]

Item = NodeRecord | Prune | AuthItem
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
#: Authority statements one replica keeps at most (token ledgers are collected
#: when their token has expired; evictions and admin changes are few).
MAX_AUTH_ITEMS = 65_536
Verifier = Callable[[Sequence[tuple[bytes, bytes, bytes]]], list[bool]]

FANOUT = 16
DEPTH = 6  # tree levels below the root (nibbles of the key)
_MOD = 1 << 256
_MASK = _MOD - 1
_ENTRY_TAG = b"smegmesh/entry/v1\0"
#: How many recent changes ``changed_since`` can report.
_CHANGE_LOG = 4096
#: Items stamped (or versioned) further ahead of our clock than this are refused.
MAX_CLOCK_SKEW_MS = 10 * 60 * 1000


def entry_hash(
    key: bytes, record: NodeRecord | None, prune: Prune | None, auth: AuthItem | None = None
) -> int:
    """The 256-bit hash of what a replica holds for ``key`` (0 if nothing)."""
    if record is None and prune is None and auth is None:
        return 0
    h = hashlib.sha256(_ENTRY_TAG)
    h.update(key)
    if record is not None:
        h.update(b"R" + record.version.to_bytes(8, "big") + record.signature)
    if prune is not None:
        h.update(b"P" + prune.target_version.to_bytes(8, "big") + prune.signature)
    if auth is not None:
        h.update(b"A" + auth.signature)
    return int.from_bytes(h.digest(), "big")


def _prefix(key: bytes, depth: int) -> int:
    return int.from_bytes(key[:4], "big") >> (32 - 4 * depth)


@dataclass(slots=True)
class _Entry:
    record: NodeRecord | None = None
    prune: Prune | None = None
    h: int = 0
    auth: AuthItem | None = None  # an authority statement (keyed by its own hash)


def _rec_wins(new: NodeRecord, cur: NodeRecord | None) -> bool:
    return cur is None or (new.version, new.signature) > (cur.version, cur.signature)


def _prune_wins(new: Prune, cur: Prune | None) -> bool:
    return cur is None or (new.target_version, new.signature) > (
        cur.target_version,
        cur.signature,
    )


def _is_live(e: _Entry) -> bool:
    r = e.record
    return r is not None and not r.left and (e.prune is None or r.version > e.prune.target_version)


class MeshState:
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
    ) -> None:
        self.mesh_id = validate_mesh_id(mesh_id)
        self._verifier = verifier
        self._horizon: int | None = gc_horizon_ms
        #: records and prunes need admission proofs (see core.authority)
        self.admission = admission
        self._authority = Authority(self.mesh_id)
        self._auth_count = 0
        self._good_certs: set[bytes] = set()
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

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        """Number of entries: records, prunes *and authority statements* (see :meth:`node_keys`)."""
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> Iterator[bytes]:
        """Every entry's key, authority statements' included (see :meth:`node_keys`)."""
        return iter(self._entries)

    def node_keys(self) -> Iterator[bytes]:
        """The keys of nodes: entries with a record or a prune (no authority statement)."""
        return (k for k, e in self._entries.items() if e.record is not None or e.prune is not None)

    def get(self, key: bytes) -> NodeRecord | None:
        """The record held for ``key`` (live or not); see :meth:`is_live`."""
        e = self._entries.get(key)
        return None if e is None else e.record

    def record(self, key: bytes) -> NodeRecord | None:
        """Alias of :meth:`get`: the record held for ``key`` (live or not)."""
        return self.get(key)

    def live_record(self, key: bytes) -> NodeRecord | None:
        """The record of ``key`` if the node is live, else None."""
        e = self._entries.get(key)
        return e.record if e is not None and _is_live(e) else None

    def get_prune(self, key: bytes) -> Prune | None:
        e = self._entries.get(key)
        return None if e is None else e.prune

    def is_live(self, key: bytes) -> bool:
        e = self._entries.get(key)
        return e is not None and _is_live(e)

    def live_records(self) -> list[NodeRecord]:
        """Records of live nodes (not left, not pruned), in key order."""
        return [
            e.record
            for _, e in sorted(self._entries.items())
            if e.record is not None and _is_live(e)
        ]

    def records(self) -> list[NodeRecord]:
        """Every record held (including left and pruned ones), in key order."""
        return [e.record for _, e in sorted(self._entries.items()) if e.record is not None]

    def prunes(self) -> list[Prune]:
        return [e.prune for _, e in sorted(self._entries.items()) if e.prune is not None]

    def items_for(self, keys: Iterable[bytes]) -> list[Item]:
        """Record then prune (or the statement) held for each of ``keys``."""
        out: list[Item] = []
        for k in keys:
            e = self._entries.get(k)
            if e is None:
                continue
            if e.auth is not None:
                out.append(e.auth)
            if e.record is not None:
                out.append(e.record)
            if e.prune is not None:
                out.append(e.prune)
        return out

    @property
    def authority(self) -> Authority:
        """Founder, admins, evictions, token ledger (from the statements held)."""
        return self._authority

    def auth_items(self) -> list[AuthItem]:
        return [e.auth for _, e in sorted(self._entries.items()) if e.auth is not None]

    def admission_error(self, key: bytes, chain: Sequence[Cert]) -> str | None:
        """Why ``chain`` does not admit ``key`` (structure, evictions), or None."""
        return self._authority.check_chain(key, chain)

    def is_member(self, key: bytes) -> bool:
        """An admitted node that has not left (live or pruned: a pruned node may refute)."""
        e = self._entries.get(key)
        return e is not None and e.record is not None and not e.record.left

    def all_items(self) -> list[Item]:
        return self.items_for(sorted(self._entries))

    def entry_hash_of(self, key: bytes) -> int:
        e = self._entries.get(key)
        return 0 if e is None else e.h

    def versions_of(self, key: bytes) -> tuple[int, int]:
        """``(record version + 1 or 0, prune target_version + 1 or 0)`` for ``key``."""
        e = self._entries.get(key)
        if e is None:
            return (0, 0)
        if e.auth is not None:
            return (1, 0)
        return (
            0 if e.record is None else e.record.version + 1,
            0 if e.prune is None else e.prune.target_version + 1,
        )

    # ------------------------------------------------------------------ digest tree

    def root(self) -> tuple[int, int]:
        """(sum of all entry hashes mod 2^256, number of keys)."""
        return self.node(0, 0)

    def node(self, depth: int, prefix: int) -> tuple[int, int]:
        """(sum, count) of the tree node at ``depth`` with key prefix ``prefix``."""
        n = self._levels[depth].get(prefix)
        return (0, 0) if n is None else (n[0], n[1])

    def digest(self) -> bytes:
        """32-byte root digest: equal iff the states are equal (w.o.p.)."""
        s, c = self.root()
        return hashlib.sha256(
            b"smegmesh/digest/v1\0" + s.to_bytes(32, "big") + c.to_bytes(8, "big")
        ).digest()

    def keys_under(self, depth: int, prefix: int) -> list[bytes]:
        """Keys whose first ``depth`` nibbles are ``prefix``."""
        if depth == 0:
            return list(self._entries)
        out: list[bytes] = []
        self._collect(depth, prefix, out)
        return out

    def _collect(self, depth: int, prefix: int, out: list[bytes]) -> None:
        if depth == DEPTH:
            out.extend(self._buckets.get(prefix, ()))
            return
        nxt = self._levels[depth + 1]
        base = prefix << 4
        for c in range(FANOUT):
            if base + c in nxt:
                self._collect(depth + 1, base + c, out)

    @property
    def version(self) -> int:
        """A counter bumped on every change: lets callers cache views of the state."""
        return self._version

    def changed_since(self, version: int) -> list[bytes] | None:
        """Keys changed after ``version``, or None when that is too far back to tell."""
        if version < self._changes_base or version > self._version:
            return None
        return self._changes[version - self._changes_base :]

    def _install(
        self,
        key: bytes,
        record: NodeRecord | None,
        prune: Prune | None,
        auth: AuthItem | None = None,
    ) -> None:
        self._version += 1
        self._changes.append(key)
        if len(self._changes) > _CHANGE_LOG:
            half = len(self._changes) // 2
            del self._changes[:half]
            self._changes_base += half
        e = self._entries.get(key)
        old_rec = None if e is None else e.record
        if old_rec is not record:
            self._records += (record is not None) - (old_rec is not None)
            self._record_bytes += _size(record) - _size(old_rec)
        old_h = 0 if e is None else e.h
        new_h = entry_hash(key, record, prune, auth)
        existed = e is not None
        exists = record is not None or prune is not None or auth is not None
        if exists:
            if e is None:
                e = self._entries[key] = _Entry()
            e.record, e.prune, e.h, e.auth = record, prune, new_h, auth
        elif e is not None:
            del self._entries[key]
        dc = int(exists) - int(existed)
        top = int.from_bytes(key[:4], "big")
        for d in range(DEPTH + 1):
            p = top >> (32 - 4 * d)
            lvl = self._levels[d]
            n = lvl.get(p)
            if n is None:
                n = lvl[p] = [0, 0]
            n[0] = (n[0] - old_h + new_h) & _MASK
            n[1] += dc
            if n[1] == 0:
                del lvl[p]
        if dc:
            p = top >> (32 - 4 * DEPTH)
            if dc > 0:
                self._buckets.setdefault(p, set()).add(key)
            else:
                b = self._buckets[p]
                b.discard(key)
                if not b:
                    del self._buckets[p]

    # ------------------------------------------------------------------ updates

    def _too_old(self, item: Item, now_ms: int) -> bool:
        if self._horizon is None:
            return False
        if isinstance(item, Cert):  # a token ledger entry matters until its token expires
            return 0 < item.token_expiry_ms < now_ms - self._horizon
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
            check_record_fields(item, self.mesh_id)
            return item.wg_key
        if type(item) is Prune:
            check_prune_fields(item, self.mesh_id)
            return item.target
        if isinstance(item, _AUTH_TYPES):
            try:
                check_auth_fields(item, self.mesh_id)
            except CertError as e:
                raise RecordError(e.field, e.message) from None
            if (
                type(item) is Cert
                and self._auth_count >= MAX_AUTH_ITEMS
                and item.key not in self._entries
            ):
                raise RecordError("auth", "too many authority statements")
            return item.key
        raise RecordError("item", f"not a NodeRecord, Prune or statement: {type(item).__name__}")

    def _wins(self, item: Item) -> bool:
        e = self._entries.get(item.key)
        if isinstance(item, NodeRecord):
            return _rec_wins(item, None if e is None else e.record)
        if isinstance(item, Prune):
            return _prune_wins(item, None if e is None else e.prune)
        return e is None

    def _put(self, item: Item) -> None:
        e = self._entries.get(item.key)
        rec = None if e is None else e.record
        pr = None if e is None else e.prune
        if isinstance(item, NodeRecord):
            self._install(item.wg_key, item, pr)
        elif isinstance(item, Prune):
            self._install(item.target, rec, item)
        else:
            self._install(item.key, None, None, item)
            self._auth_count += 1
            self._on_statement(item)

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
        if not self.admission or isinstance(item, _AUTH_TYPES):
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
        if not _sig_known_good(tr):
            if not self._verifier([_job(tr)])[0]:
                raise RecordError("target_record", "invalid signature")
            _mark_sig_good(tr)

    def _check_member(self, key: bytes, chain: Sequence[Cert], field: str) -> None:
        reason = self._authority.check_chain(key, chain)
        if reason is not None:
            raise RecordError(field, reason)
        self._verify_certs(chain, field)

    def _verify_certs(self, certs: Sequence[AuthItem], field: str) -> None:
        todo = [c for c in certs if c.key not in self._good_certs]
        if not todo:
            return
        oks = self._verifier([(c.signer, c.signed_payload(), c.signature) for c in todo])
        if not all(oks):
            raise RecordError(field, "invalid admission certificate signature")
        if len(self._good_certs) > 4 * MAX_AUTH_ITEMS:
            self._good_certs.clear()
        self._good_certs.update(c.key for c in todo)

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
        if len(self._good_certs) > 4 * MAX_AUTH_ITEMS:
            self._good_certs.clear()
        self._good_certs.update(c.key for c, ok in zip(certs, oks, strict=True) if ok)

    def _check_proofs(self, rec: NodeRecord) -> None:
        for p in rec.proofs:
            other = Authority.build(p.founding.mesh_id, [p.founding])
            reason = other.check_chain(rec.wg_key, p.chain)
            if reason is not None:
                raise RecordError("proofs", f"mesh {p.founding.mesh_id}: {reason}")
            self._verify_certs((p.founding, *p.chain), "proofs")

    def _on_statement(self, item: AuthItem) -> None:
        a = self._authority
        if isinstance(item, Cert):
            if item.token_hash:
                a.token_subjects.setdefault(item.token_hash, set()).add(item.subject)
            return
        if isinstance(item, InviteRevoke):
            a.invite_revokes.setdefault(item.token_hash, []).append(item)
            return
        before = (a.founding, frozenset(a.revoked))
        self._authority = Authority.build(self.mesh_id, self._iter_auth())
        after = (self._authority.founding, frozenset(self._authority.revoked))
        if self.admission and before != after:
            self._purge()

    def _iter_auth(self) -> Iterator[AuthItem]:
        for e in self._entries.values():
            if e.auth is not None:
                yield e.auth

    def _purge(self) -> None:
        """Drop records and prunes that evictions made invalid (a grow-only verdict)."""
        a = self._authority
        for key, e in list(self._entries.items()):
            rec, pr = e.record, e.prune
            if rec is not None and a.check_chain(rec.wg_key, rec.chain) is not None:
                rec = None
            if pr is not None and (
                a.check_chain(pr.by_wg_key, pr.by_chain) is not None or a.is_revoked(pr.target)
            ):
                pr = None
            if rec is not e.record or pr is not e.prune:
                self._install(key, rec, pr)
                self._purged.add(key)

    def pop_purged(self) -> set[bytes]:
        """Keys whose items an eviction removed since the last call."""
        out, self._purged = self._purged, set()
        return out

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
        if not _sig_known_good(item):
            if not self._verifier([_job(item)])[0]:
                raise RecordError("signature", "invalid signature")
            _mark_sig_good(item)
        self._put(item)
        return True

    def apply_many(
        self, items: Iterable[Item], now_ms: int
    ) -> tuple[set[bytes], list[RecordError]]:
        """Validate and merge a batch (signatures verified in one verifier call).

        Invalid items are skipped and returned as errors; returns the set of
        changed keys (including keys an eviction in the batch purged).
        Statements are applied first (a founding record or an admission must be
        known before the records that depend on it). A forged item cannot mask a
        valid one of the same batch.
        """
        errors: list[RecordError] = []
        batch = list(items)
        changed: set[bytes] = set()
        statements = [it for it in batch if isinstance(it, _AUTH_TYPES)]
        # Founding first, then the rest in time order (admins before their acts).
        statements.sort(key=lambda a: (not isinstance(a, Founding), a.timestamp_ms))
        for st in statements:
            try:
                if self.apply(st, now_ms):
                    changed.add(st.key)
            except RecordError as e:
                errors.append(e)
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
        while pending:
            best: dict[tuple[bytes, bool], Item] = {}
            for it in pending:
                slot = (it.key, isinstance(it, NodeRecord))
                cur = best.get(slot)
                if cur is None or _better(it, cur):
                    best[slot] = it
            cands = list(best.values())
            unknown = [c for c in cands if not _sig_known_good(c)]
            verdict = dict(
                zip(map(id, unknown), self._verifier([_job(c) for c in unknown]), strict=True)
            )
            oks = [verdict.get(id(c), True) for c in cands]
            failed: set[tuple[bytes, bool]] = set()
            for c, ok in zip(cands, oks, strict=True):
                if ok:
                    _mark_sig_good(c)
                    self._put(c)
                    changed.add(c.key)
                else:
                    errors.append(RecordError("signature", "invalid signature"))
                    failed.add((c.key, isinstance(c, NodeRecord)))
            pending = [
                it
                for it in pending
                if (it.key, isinstance(it, NodeRecord)) in failed
                and not any(it is c for c in cands)
                and self._wins(it)
            ]
        changed |= self.pop_purged()
        return changed, errors

    def merge(self, other: MeshState) -> set[bytes]:
        """Join ``other`` into this state; returns the keys that changed.

        ``other`` holds only validated items, so signatures are not re-checked
        (admission rules are, when this state enforces them).
        """
        if other.mesh_id != self.mesh_id:
            raise ValueError(f"cannot merge mesh {other.mesh_id!r} into {self.mesh_id!r}")
        changed: set[bytes] = set()
        for key, oe in other._entries.items():
            if oe.auth is not None and key not in self._entries:
                self._put(oe.auth)
                changed.add(key)
        for key, oe in other._entries.items():
            if oe.auth is not None:
                continue
            e = self._entries.get(key)
            rec = None if e is None else e.record
            pr = None if e is None else e.prune
            new_rec = oe.record if oe.record is not None and _rec_wins(oe.record, rec) else rec
            new_pr = oe.prune if oe.prune is not None and _prune_wins(oe.prune, pr) else pr
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
        return changed | self.pop_purged()

    def gc(self, now_ms: int, horizon_ms: int) -> int:
        """Drop tombstones older than ``now_ms - horizon_ms``; returns items dropped.

        Drops ``left`` records and prunes, with the records the prunes kill, and
        the token ledger entries (admission certificates) of tokens that expired
        before the horizon. Evictions, admin changes and founding records are
        never dropped. Remembers the horizon for :meth:`apply` (see the module
        docstring).
        """
        if horizon_ms < 0:
            raise ValueError("horizon must be >= 0")
        self._horizon = horizon_ms
        cutoff = now_ms - horizon_ms
        dropped = 0
        ledger_dropped = False
        for key, e in list(self._entries.items()):
            if e.auth is not None:
                a = e.auth
                if isinstance(a, Cert) and 0 < a.token_expiry_ms < cutoff:
                    self._install(key, None, None, None)
                    self._auth_count -= 1
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
        if ledger_dropped:
            self._authority = Authority.build(self.mesh_id, self._iter_auth())
        return dropped

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MeshState):
            return NotImplemented
        return self.mesh_id == other.mesh_id and {k: e.h for k, e in self._entries.items()} == {
            k: e.h for k, e in other._entries.items()
        }

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MeshState({self.mesh_id!r}, {len(self)} keys, digest={self.digest().hex()[:16]})"


def _size(rec: NodeRecord | None) -> int:
    return 0 if rec is None else len(rec.signed_payload())


def _job(item: Item) -> tuple[bytes, bytes, bytes]:
    if isinstance(item, NodeRecord):
        return (item.sign_key, item.signed_payload(), item.signature)
    if isinstance(item, Prune):
        return (item.by_sign_key, item.signed_payload(), item.signature)
    return (item.signer, item.signed_payload(), item.signature)


# Items are frozen; once an item object's signature has been verified we note it
# in the object itself, so the same object offered to many states (simulations,
# several meshes' views) is verified only once per process.
_SIG_OK = "_smegmesh_sig_ok"


def _sig_known_good(item: Item) -> bool:
    return item.__dict__.get(_SIG_OK) is True


def _mark_sig_good(item: Item) -> None:
    item.__dict__[_SIG_OK] = True


def _better(a: Item, b: Item) -> bool:
    if isinstance(a, NodeRecord) and isinstance(b, NodeRecord):
        return (a.version, a.signature) > (b.version, b.signature)
    if isinstance(a, Prune) and isinstance(b, Prune):
        return (a.target_version, a.signature) > (b.target_version, b.signature)
    raise TypeError("compare items of one kind")
