"""A record sent as what changed since the version its receiver holds. Pure.

Under churn most records gossiped are new versions of records every member
holds: a restart (the node re-signs its record, same key, endpoints, TLS pin
and admission chain), a refresh, a change of alias or routes. A whole record
is 200-300 bytes even with its chain by reference (``core.elide``); what
differs from the version before is its version, time and signature (~90
bytes) and, rarely, a field or two. So a push to a member that takes them
sends such a record as a *delta* (:class:`~smegmesh.core.codec.Elided` of kind
:data:`~smegmesh.core.codec.ITEM_DELTA`, six fields)::

    [key id (8), base ref (16), version, timestamp, signature,
     [[wire index, value], ...]]

To a member that says it takes them (:data:`TAKES_SHORT`), the base ref
goes as 8 bytes and the timestamp as ``[timestamp - version]``
(``elide.shortened``, :func:`short_time`): a record's version is its time,
or one more than its last (``NodeRecord.evolve``), so that is 2 bytes, not 9.

The *base* is the record the sender held before this one (kept by the state
for a while, :class:`RecordBases`) and is named by :data:`BASE_REF_LEN`
bytes of a hash of its signature (as a prune names its target record); the
changes are the wire fields (``NodeRecord.to_obj``) that differ from it,
never the key, sign key, mesh id or address (a record cannot change those).
The receiver rebuilds the record from the base if it holds that very record
(:func:`expand_delta`), and checks it as any other: the signature covers
every field, so a delta against another base, or a lying one, is a record
whose signature fails. A receiver that holds another version names nothing
it can rebuild from: the delta is *unresolved*, and a sync session with the
pusher brings the record whole (``ExchangeMixin._on_push``), as for an
unresolved reference.

Which members take deltas: every member, until a push of deltas to it fails
at its current record version (a node older than deltas refuses a push it
cannot decode, ``ExchangeMixin.handle_failure``); then it gets whole records
until an ``Ack`` of a push says it takes deltas (:data:`TAKES_DELTAS` in the
ack's ``probe_id``, which older nodes set to 0 and never read in a push's
ack) or it publishes a new record version (``core.meshtag.MeshTags``). A
newer member's one failed push (a lost datagram) costs whole records until
its next ack; an older member loses one push from each member that tries,
which gossip brings it again (its rounds, offers and pulls).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from smegmesh.core.codec import ITEM_DELTA, KEY_ID_LEN, Elided
from smegmesh.core.record import NodeRecord, RecordError, record_from_obj
from smegmesh.core.record_model import (
    WIRE_ADDRESS,
    WIRE_CHAIN,
    WIRE_KEY,
    WIRE_MESH,
    WIRE_SIGN_KEY,
    WIRE_SIGNATURE,
    WIRE_TIME,
    WIRE_VERSION,
)

__all__ = [
    "BASE_KEEP_MS",
    "BASE_REF_LEN",
    "MAX_BASES",
    "MAX_BASES_BYTES",
    "MAX_BASE_BYTES",
    "MAX_CHANGES",
    "SHORT_REF_LEN",
    "TAKES_DELTAS",
    "TAKES_SHORT",
    "RecordBases",
    "as_deltas",
    "base_ref",
    "base_size",
    "delta_of",
    "expand_delta",
    "names",
    "names_record",
    "short_time",
]

#: The bit of a push ``Ack``'s ``probe_id`` that says "send me deltas".
TAKES_DELTAS = 1
#: The bit of a push ``Ack``'s ``probe_id`` that says "names of 8 bytes, and
#: a delta's time as its offset from the version, will do" (``elide.shortened``;
#: thirty-second session; ``treecast`` uses 2).
TAKES_SHORT = 4
#: Bytes of the hash of its signature that name a record: a delta's base (and
#: a prune's target record, ``core.elide``). Not fewer in what every member
#: reads: an owner that signs two records of one version whose names collide
#: (2^(4 x this) signatures for a pair) would make honest relays' deltas fail
#: their signatures. A push to a member that takes them cuts them to 8 bytes
#: (``elide.shortened``), and such a member takes either (:func:`names_record`).
BASE_REF_LEN = 16
#: Bytes of such a name (and of a chain's, ``core.elide``) in a push to a
#: member that said it takes short names (:data:`TAKES_SHORT`; thirty-second
#: session: ~2 % of the churn bytes at 1,000 nodes). Only a holder of two
#: chains for one sign key, or the owner of two records of one version, could
#: make their names meet (2^32 certificates or signatures), and all it would
#: buy is that its own elided items fail their signatures where the other is
#: held, and come whole by sync.
SHORT_REF_LEN = 8
#: The lengths of a name that are taken (:func:`names`).
_REF_LENS = (SHORT_REF_LEN, BASE_REF_LEN)
#: Changed fields one delta may carry (a record's wire form has 21 or 22).
MAX_CHANGES = 16
#: Bases kept per state, their bytes in all, and for how long (a change
#: spreads in seconds; its late answers to wants within a minute).
MAX_BASES = 1024
MAX_BASES_BYTES = 2 * 1024 * 1024
BASE_KEEP_MS = 60_000
#: Largest base (signed bytes): a delta of a larger record is never sent, and
#: refused (rebuilding one costs work by the size of the record held, not of
#: the delta: a bridge's record of many routes is tens of KB).
MAX_BASE_BYTES = 8 * 1024
#: What a delta never changes (the record's identity, derived by the receiver
#: from the key it holds) or carries in its own fields.
_FIXED = frozenset(
    {WIRE_MESH, WIRE_KEY, WIRE_SIGN_KEY, WIRE_VERSION, WIRE_TIME, WIRE_ADDRESS, WIRE_SIGNATURE}
)


def base_ref(rec: NodeRecord) -> bytes:
    """The name a delta gives its base: a hash of its signature, cut short."""
    return hashlib.sha256(rec.signature).digest()[:BASE_REF_LEN]


def names(ref: object, digest: bytes) -> bool:
    """Whether ``ref`` names what hashes to ``digest``.

    It does as its first 16 bytes, or its first :data:`SHORT_REF_LEN` (a
    short push, ``elide.shortened``).
    """
    return type(ref) is bytes and len(ref) in _REF_LENS and digest[: len(ref)] == ref


def names_record(ref: object, rec: NodeRecord) -> bool:
    """Whether ``ref`` (a delta's base, a prune's target record) names ``rec``."""
    return names(ref, hashlib.sha256(rec.signature).digest())


def base_size(rec: NodeRecord) -> int:
    """The bytes a record counts as a base (its signed bytes, cached on the record)."""
    return len(rec.signed_payload())


@dataclass(slots=True)
class RecordBases:
    """Records replaced by a newer version of the same key, for a while: deltas' bases.

    At most :data:`MAX_BASES` of at most :data:`MAX_BASE_BYTES` each and
    :data:`MAX_BASES_BYTES` in all, each for :data:`BASE_KEEP_MS` after it was
    replaced by the node's clock (the oldest go first); a base is good only for
    the very record that replaced it.
    """

    #: key -> [the record replaced, the signature of the record that replaced
    #: it, when, its delta to that record (made at its first push; None: not
    #: yet; False: none)]
    _bases: OrderedDict[bytes, list[Any]] = field(default_factory=OrderedDict)
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self._bases)

    def note(self, old: NodeRecord, new: NodeRecord, now_ms: int) -> None:
        """``new`` replaced ``old`` (the same key) at ``now_ms`` (this node's clock)."""
        self._drop(old.wg_key)
        if new.wg_key != old.wg_key or new.version <= old.version:
            return  # (one of two records of a version won: no base for it)
        size = base_size(old)
        if size > MAX_BASE_BYTES:
            return
        b = self._bases
        while b:
            first = next(iter(b.values()))
            if (
                len(b) < MAX_BASES
                and self._bytes + size <= MAX_BASES_BYTES
                and first[2] > now_ms - BASE_KEEP_MS
            ):
                break
            self._drop(next(iter(b)))
        b[old.wg_key] = [old, new.signature, now_ms, None]
        self._bytes += size

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: when each was replaced moves with it."""
        for b in self._bases.values():
            b[2] += delta_ms

    def _drop(self, key: bytes) -> None:
        got = self._bases.pop(key, None)
        if got is not None:
            self._bytes -= base_size(got[0])

    def delta_for(self, rec: NodeRecord) -> Elided | None:
        """``rec`` as a delta from the record it replaced here (None: none kept, or none)."""
        got = self._bases.get(rec.wg_key)
        if got is None or got[1] != rec.signature:
            return None
        if got[3] is None:
            got[3] = delta_of(rec, got[0]) or False
        return got[3] or None


def delta_of(rec: NodeRecord, base: NodeRecord) -> Elided | None:
    """``rec`` as a delta from ``base`` (None: not worth one, or not one)."""
    if rec.wg_key != base.wg_key or rec.version <= base.version or base_size(base) > MAX_BASE_BYTES:
        return None
    new, old = rec.to_obj(), base.to_obj()
    if len(new) != len(old):
        return None  # an extension came or went: rare, sent whole
    changes = [
        [i, v] for i, (v, w) in enumerate(zip(new, old, strict=True)) if i not in _FIXED and v != w
    ]
    if len(changes) > MAX_CHANGES:
        return None
    return Elided(
        ITEM_DELTA,
        (
            rec.wg_key[:KEY_ID_LEN],
            base_ref(base),
            rec.version,
            rec.timestamp_ms,
            rec.signature,
            changes,
        ),
    )


def as_deltas(news: Sequence[Any], sent: Sequence[Any], bases: RecordBases) -> list[Any] | None:
    """``sent`` (``news`` as pushed) with records as deltas where ``bases`` has one (None: none)."""
    out = [
        (bases.delta_for(n) or s) if type(n) is NodeRecord else s
        for n, s in zip(news, sent, strict=True)
    ]
    return None if all(d is s for d, s in zip(out, sent, strict=True)) else out


def short_time(item: Any) -> Any:
    """``item`` with a delta's time as its offset from the version (``[offset]``).

    Anything else as it is. Only for a member that takes them.
    """
    if type(item) is not Elided or item.kind != ITEM_DELTA:
        return item
    kid, ref, version, ts, sig, changes = item.fields
    return Elided(ITEM_DELTA, (kid, ref, version, [ts - version], sig, changes))


def expand_delta(held: NodeRecord | None, fields: tuple[Any, ...]) -> NodeRecord | None:
    """The record a delta makes of ``held`` (None: ``held`` is not its base); raises RecordError.

    Shapes are checked here, the record as any other by the state (its
    signature covers what the delta set).
    """
    _kid, ref, version, ts, sig, changes = fields
    if type(ts) is list and len(ts) == 1 and type(ts[0]) is int and type(version) is int:
        ts = version + ts[0]  # a short time (:func:`short_time`)
    if type(ref) is not bytes or type(version) is not int or type(ts) is not int:
        raise RecordError("item", "a delta names its base, version and time")
    if type(sig) is not bytes or type(changes) is not list or len(changes) > MAX_CHANGES:
        raise RecordError("item", "a delta carries a signature and at most 16 changes")
    if held is None or not names_record(ref, held) or version <= held.version:
        return None
    if base_size(held) > MAX_BASE_BYTES:
        raise RecordError("item", "a delta of a record too large for one")  # never sent
    obj = held.to_obj()
    obj[WIRE_VERSION], obj[WIRE_TIME], obj[WIRE_SIGNATURE] = version, ts, sig
    chain_changed = False
    seen: set[int] = set()
    for ch in changes:
        if type(ch) is not list or len(ch) != 2 or type(ch[0]) is not int:
            raise RecordError("item", "a delta's change is [index, value]")
        i, v = ch
        if i in _FIXED or not 0 <= i < len(obj) or i in seen:
            # One fixed reason, not the sender's index: the reason is counted per
            # distinct text in the daemon's rate-limited log (daemon/ratelog.py).
            raise RecordError("item", "a delta changes a fixed, unknown or repeated field")
        seen.add(i)
        obj[i] = v
        chain_changed |= i == WIRE_CHAIN
    if chain_changed:
        return record_from_obj(obj)
    obj[WIRE_CHAIN] = []  # the held chain's objects, not decoded again
    return replace(record_from_obj(obj), chain=held.chain)
