"""Mesh state storage: the per-key entries, their queries and the digest tree.

The storage half of :class:`~smegmesh.core.state.MeshState` (see that
module's docstring for the digest tree): what is held per key, the read-only
queries over it, and :meth:`StateStore._install`, the one place that changes
an entry and keeps the tree sums, counts and change log up to date.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from smegmesh.core.authority import Authority
from smegmesh.core.cert import AuthItem, Cert
from smegmesh.core.delta import RecordBases
from smegmesh.core.record import NodeRecord, Prune

__all__ = ["DEPTH", "FANOUT", "Item", "StateStore", "entry_hash"]

Item = NodeRecord | Prune | AuthItem


FANOUT = 16
DEPTH = 6  # tree levels below the root (nibbles of the key)
_MOD = 1 << 256
_MASK = _MOD - 1
_ENTRY_TAG = b"smegmesh/entry/v1\0"
#: How many recent changes ``changed_since`` can report.
_CHANGE_LOG = 4096


#: Keys remembered by :meth:`StateStore.was_refuted`.
REFUTED_MEMORY = 1024


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


class StateStore:
    """The entries of one mesh's state and the digest tree over them (no validation)."""

    mesh_id: str
    _authority: Authority
    _records: int
    _record_bytes: int
    _entries: dict[bytes, _Entry]
    _levels: list[dict[int, list[int]]]
    _buckets: dict[int, set[bytes]]
    _version: int
    _changes: list[bytes]
    _changes_base: int
    #: keys whose prune a newer record made moot (bounded; see :meth:`was_refuted`)
    _refuted: dict[bytes, None]
    #: records replaced by newer versions, for a while (bases of deltas, core.delta)
    bases: RecordBases

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
        """The prune held for ``key``, or None."""
        e = self._entries.get(key)
        return None if e is None else e.prune

    def is_live(self, key: bytes) -> bool:
        """Whether ``key`` has a record that is neither left nor pruned."""
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
        """Every prune held, in key order."""
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

    def news_for(self, keys: Iterable[bytes]) -> list[Item]:
        """What a push of ``keys`` carries: per key the statement, else the prune, else the record.

        A push goes to members, which hold the record a prune prunes (in an
        admission mesh the prune carries it as well); a held prune is never
        moot (see :meth:`_install`), so a refutation is the record alone. A
        member that lacked the other part gets it from anti-entropy.
        """
        out: list[Item] = []
        for k in keys:
            e = self._entries.get(k)
            if e is None:
                continue
            it = e.auth or e.prune or e.record
            if it is not None:
                out.append(it)
        return out

    @property
    def authority(self) -> Authority:
        """Founder, admins, evictions, token ledger (from the statements held)."""
        return self._authority

    def auth_items(self) -> list[AuthItem]:
        """Every authority statement held, in key order."""
        return [e.auth for _, e in sorted(self._entries.items()) if e.auth is not None]

    def admission_error(self, key: bytes, chain: Sequence[Cert]) -> str | None:
        """Why ``chain`` does not admit ``key`` (structure, evictions), or None."""
        return self._authority.check_chain(key, chain)

    def is_member(self, key: bytes) -> bool:
        """An admitted node that has not left (live or pruned: a pruned node may refute)."""
        e = self._entries.get(key)
        return e is not None and e.record is not None and not e.record.left

    def key_by_prefix(self, prefix: bytes) -> bytes | None:
        """The key of the one entry whose key begins with ``prefix``, or None.

        None also when ``prefix`` is shorter than 4 bytes or two keys begin
        with it: a prefix (an offer's 8-byte key id)
        must name one key. O(1): the digest tree's bucket of the first 24 bits
        holds the keys that could match (about one in a mesh of thousands).
        """
        if len(prefix) < 4:
            return None
        found = None
        bucket = int.from_bytes(prefix[:4], "big") >> (32 - 4 * DEPTH)
        for k in self._buckets.get(bucket, ()):
            if k.startswith(prefix):
                if found is not None:
                    return None
                found = k
        return found

    def members_by_id(self, key_id: bytes, limit: int) -> list[bytes]:
        """The members whose keys begin with ``key_id``, at most ``limit``.

        ``key_id`` is a datagram header's 4-byte sender id; O(1) as
        :meth:`key_by_prefix`. Usually one; two or more share an id by chance
        (one pair in a mesh of ~93,000) or because a member made its key to
        (2^32 work): the caller tries each, so no member can take another's id
        away.
        """
        if len(key_id) < 4:
            return []
        bucket = int.from_bytes(key_id[:4], "big") >> (32 - 4 * DEPTH)
        found = [k for k in self._buckets.get(bucket, ()) if k.startswith(key_id)]
        return sorted(k for k in found if self.is_member(k))[:limit]

    def all_items(self) -> list[Item]:
        """Everything held, in key order (see :meth:`items_for`)."""
        return self.items_for(sorted(self._entries))

    def _unless_moot(
        self, key: bytes, record: NodeRecord | None, prune: Prune | None
    ) -> Prune | None:
        """``prune``, or None if it prunes an older version than ``record``.

        Such a prune is moot: the newer record is live whatever else arrives.
        Not kept, so every replica holds the same entry whichever order the
        two came in, and a push of a refutation carries the record alone.
        """
        if record is None or prune is None or record.version <= prune.target_version:
            return prune
        self._refuted[key] = None
        if len(self._refuted) > REFUTED_MEMORY:
            del self._refuted[next(iter(self._refuted))]
        return None

    def was_refuted(self, key: bytes) -> bool:
        """Whether a prune of ``key`` was dropped lately because a newer record came.

        A prune of an older version than the record held is moot and not kept
        (see :meth:`_install`); this remembers the last :data:`REFUTED_MEMORY`
        such keys (the event detector tells "returned" from "joined" by it).
        """
        return key in self._refuted

    def entry_hash_of(self, key: bytes) -> int:
        """The entry hash of ``key`` (0 if nothing is held)."""
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
        prune = self._unless_moot(key, record, prune)
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


def _size(rec: NodeRecord | None) -> int:
    return 0 if rec is None else len(rec.signed_payload())
