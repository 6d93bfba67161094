"""Gossip messages: pushes of items, and offers that repeat keys, not items. Pure.

A ``Push`` carries fresh items (reply: an ``Ack`` whose ``ok`` says whether
anything was new). Offers: announce, then send on request.

Push gossip sends every fresh item to ``branch`` members on arrival and for
``infection_count`` rounds after, so under churn each node receives each
change several times (at 1,000 simulated nodes, 20 %/min churn: ~4.6 copies,
and 98 % of the bytes were ``Push``). The repeats are what an :class:`Offer`
replaces: it lists ``(key id, record version + 1, prune version + 1, entry
hash)`` for the items (27 bytes each with millisecond versions, 51 with the
full key; an item is 200-470), the target
answers with a :class:`Want` of the key ids it lacks or holds older, and only
those items follow in a ``Push``. A *key id* is the first :data:`KEY_ID_LEN`
(8) bytes of the key (an entry's full 32-byte key, as sent before ids, is
still read): the target looks it up in O(1) (``StateStore.key_by_prefix``)
and wants an id that names no key it holds, or two (keys equal in 64 bits:
only made on purpose, at 2^64 work, and then the item is sent whole, never
lost). An item then crosses each link about once; what repeats
is the announcement (Demers et al.'s "rumour mongering" with a pull of the
body, as in Plumtree's lazy push and Cassandra's gossip digests).

Flow (request -> reply):

    A -> B  Offer(entries)
    B -> A  Want(key ids)        the keys B wants (empty: B held them all)
    A -> B  Push(items of keys)  (reply: Ack)

The offering side keeps nothing between the two calls but the call's context
(the offered keys): it sends the *current* items of the wanted keys it
offered, and ignores any other key a Want names (:func:`wanted_parts`). A key
wanted by id comes whole (record and prune); one wanted by its full key, what
changed (B holds the record and lacks only the prune, or, in a founded
mesh, holds an older record and A no prune: under churn, most wants).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from smegmesh.core.codec import (
    KEY_ID_LEN,
    Codec,
    Elided,
    WireError,
    decode_pushed_item,
    encode_item,
)
from smegmesh.core.state import Item, MeshState
from smegmesh.core.sync_versions import prune_is_news

__all__ = [
    "CODECS",
    "KEY_ID_LEN",
    "MAX_HOPS",
    "MAX_OFFER_ENTRIES",
    "OFFER_HASH_LEN",
    "Offer",
    "OfferEntry",
    "Push",
    "Want",
    "offer_entries",
    "offers",
    "wanted",
    "wanted_parts",
]

#: Entries of one ``Offer`` (and keys of one ``Want``): 1,024 x 27 B ~ 28 KB.
MAX_OFFER_ENTRIES = 1024
_KEY_LENS = (KEY_ID_LEN, 32)
#: Bytes of the entry hash in an offer entry (tells apart equal versions).
OFFER_HASH_LEN = 4
_VERSION_END = 2**63 + 1
#: Largest ``Push.hops`` (a push answering a ``Want`` says this: "late").
MAX_HOPS = 255

OfferEntry = tuple[bytes, int, int, bytes]  # key id, record version + 1, prune version + 1, hash


@dataclass(frozen=True, slots=True)
class Push:
    """Fresh items gossiped without a digest exchange (reply: an ``Ack``).

    ``hops``: times the items were forwarded before (0: from their author); a
    hint for the receiver's choice of push or offer (``MeshNode._push_now``):
    a wrong value costs bytes or a round trip, never a change.
    """

    mesh_id: str
    #: records and prunes may be :class:`~smegmesh.core.codec.Elided` (core.elide)
    items: tuple[Item | Elided, ...]
    hops: int = 0


@dataclass(frozen=True, slots=True)
class Offer:
    """Fresh items announced by key and version (reply: a ``Want``)."""

    mesh_id: str
    entries: tuple[OfferEntry, ...]


@dataclass(frozen=True, slots=True)
class Want:
    """The offered keys whose items the receiver of an ``Offer`` asks for."""

    mesh_id: str
    keys: tuple[bytes, ...]


def _entry(state: MeshState, key: bytes) -> OfferEntry | None:
    rv, pv = state.versions_of(key)
    if rv == 0 and pv == 0:
        return None
    h = state.entry_hash_of(key).to_bytes(32, "big")[:OFFER_HASH_LEN]
    return (key[:KEY_ID_LEN], rv, pv, h)


def offer_entries(state: MeshState, keys: Iterable[bytes]) -> list[OfferEntry]:
    """The offer entries (keys by id) of the ``keys`` ``state`` holds anything for, in key order."""
    out = []
    for k in sorted(keys):
        e = _entry(state, k)
        if e is not None:
            out.append(e)
    return out


def offers(mesh_id: str, entries: list[OfferEntry]) -> list[Offer]:
    """``entries`` cut into offers of at most :data:`MAX_OFFER_ENTRIES`."""
    return [
        Offer(mesh_id, tuple(entries[i : i + MAX_OFFER_ENTRIES]))
        for i in range(0, len(entries), MAX_OFFER_ENTRIES)
    ]


#: A key wanted in full ("what changed will do") and offered again unchanged
#: this long after is wanted by id, whole: what changed did not settle it.
ASK_AGAIN_MS = 1_000
#: Keys wanted in full that are remembered (the oldest forgotten first).
MAX_ASKED = 4_096


class AskedInFull:
    """The entries a node wanted in full lately, so that a repeat is wanted whole.

    What changed, sent by reference in a founded mesh, may not settle an
    entry: a reference the wanter cannot resolve (a member admitted again,
    its new chain unknown), or two records of one version (a member that
    signed two: the prune sent alone leaves the records apart). Wanted in
    full again and again, such a key never converged by offers (review,
    twenty-first session); offered again unchanged at least
    :data:`ASK_AGAIN_MS` later, it is wanted by id and comes whole.
    """

    def __init__(self) -> None:
        self._asked: dict[bytes, tuple[int, int, bytes, int]] = {}

    def __len__(self) -> int:
        return len(self._asked)

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock was stepped by ``delta_ms``: the times asked move with it."""
        self._asked = {k: (*v[:3], v[3] + delta_ms) for k, v in self._asked.items()}

    def in_full(self, key: bytes, entry: OfferEntry, now_ms: int) -> bool:
        """Whether ``key`` (offered as ``entry``) may be wanted in full now; noted if so."""
        _id, rv, pv, h = entry
        prev = self._asked.pop(key, None)
        if prev is not None and prev[:3] == (rv, pv, h):
            if now_ms - prev[3] >= ASK_AGAIN_MS:
                return False  # the same entry again: what changed did not settle it
            self._asked[key] = prev  # a repeat in flight (several offerers at once)
            return True
        if len(self._asked) >= MAX_ASKED:
            del self._asked[next(iter(self._asked))]
        self._asked[key] = (rv, pv, h, now_ms)
        return True


def _in_full(asked: AskedInFull | None, held: bytes, entry: OfferEntry, now_ms: int) -> bool:
    return asked is None or asked.in_full(held, entry, now_ms)


def wanted(
    state: MeshState,
    entries: Iterable[OfferEntry],
    asked: AskedInFull | None = None,
    now_ms: int = 0,
) -> tuple[bytes, ...]:
    """Keys of ``entries`` whose items ``state`` lacks or holds older.

    Newer on either part (the record's version or the version the prune
    covers) is wanted; equal versions with another hash are wanted too (the
    merge picks one side, and both then converge); older or equal is not. An
    id that names no key held, or two, is wanted. O(1) per entry: a hostile
    member's offer costs a lookup per entry.

    A wanted key is named as offered (by id: send the whole entry), except
    when only the prune is newer and the record held is at least as new as
    the one offered: then by the full key, which says "what changed will do"
    (the prune alone, ~200 bytes, not the record again; :func:`wanted_parts`);
    and, in a founded mesh, when the offered record is newer than one held and
    the offerer holds no prune (a restart's record): by the full key too, and
    the record comes as news, by reference (``core.elide``), not whole with
    its admission chain; and, in a founded mesh, equal versions of a pruned
    entry with another hash (two members' prunes of one crash): by the full
    key, the offerer's prune by reference.
    With ``asked``, a key wanted in full that is offered again unchanged
    (:class:`AskedInFull`) is wanted by id.
    A prune of an older record than ours is not wanted (it would be dropped
    on arrival, and wanted again at every offer).
    Under churn most wanted entries are such prunes. An offerer of an older
    version reads the full key as a want and sends the whole entry.
    """
    out: list[bytes] = []
    seen: set[bytes] = set()
    for entry in entries:
        key, rv, pv, h = entry
        if key in seen:
            continue
        seen.add(key)
        held = key if len(key) == 32 else state.key_by_prefix(key)
        if held is None:
            out.append(key)
            continue

        mine_rv, mine_pv = state.versions_of(held)
        if rv > mine_rv:
            # a newer record of a key whose record we hold, not pruned at the
            # offerer (a restart's), in a founded mesh: what changed will do,
            # the record by reference (without admission the whole entry is
            # that record: the id is shorter); else the whole entry
            full = state.admission and mine_rv > 0 and pv == 0
            out.append(held if full and _in_full(asked, held, entry, now_ms) else key)
        elif prune_is_news(pv, mine_pv, mine_rv):
            out.append(held)  # the prune alone will do (pv < mine_rv: moot, not wanted)
        elif rv == mine_rv and pv == mine_pv:
            mine_h = state.entry_hash_of(held).to_bytes(32, "big")[:OFFER_HASH_LEN]
            if mine_h != h:
                # In a founded mesh, equal versions of a pruned entry are most
                # often two members' prunes of one crash: the offerer's prune
                # will do (by reference; its target record, carried inside,
                # settles a conflict of records too, or is pulled by sync)
                full = state.admission and pv > 0
                out.append(held if full and _in_full(asked, held, entry, now_ms) else key)
    return tuple(out)


def wanted_parts(
    offered: frozenset[bytes], want: Want
) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """(keys to send whole, keys to send what changed of) for a ``Want`` of ``offered``.

    Named by id: the whole entry (the target lacks the record). Named in full:
    what changed (:meth:`MeshState.news_for`; see :func:`wanted`). Keys not
    offered are ignored.
    """
    named = set(want.keys)
    # a full key that is not the offered one with its id (two keys equal in
    # 64 bits: only made on purpose): the offered key goes whole, never lost
    full_ids = {k[:KEY_ID_LEN] for k in named if len(k) == 32}
    whole = frozenset(
        k
        for k in offered
        if k[:KEY_ID_LEN] in named or (k[:KEY_ID_LEN] in full_ids and k not in named)
    )
    news = frozenset(k for k in offered if k in named and k not in whole)
    return whole, news


# Wire codecs (type codes 13-15) ----------------------------------------------------------
def _arr(v: object, n: int | None = None) -> list[Any]:
    if type(v) is not list or (n is not None and len(v) != n):
        raise WireError("expected an array" + ("" if n is None else f" of {n}"))
    return v


def _str(v: object) -> str:
    if type(v) is not str or len(v) > 63:
        raise WireError("expected a mesh id string")
    return v


def _bin(v: object, n: int) -> bytes:
    if type(v) is not bytes or len(v) != n:
        raise WireError(f"expected {n} bytes")
    return v


def _key(v: object) -> bytes:
    if type(v) is not bytes or len(v) not in _KEY_LENS:
        raise WireError("expected a key id (8 bytes) or a key (32)")
    return v


def _version(v: object) -> int:
    if type(v) is not int or not 0 <= v < _VERSION_END:
        raise WireError("expected a version")
    return v


def _bounded(v: object) -> list[Any]:
    arr = _arr(v)
    if len(arr) > MAX_OFFER_ENTRIES:
        raise WireError(f"more than {MAX_OFFER_ENTRIES} entries")
    return arr


def _dec_push(b: Any) -> Push:
    m, items, hops = _arr(b, 3)
    if type(hops) is not int or not 0 <= hops <= MAX_HOPS:
        raise WireError("expected a hop count")
    return Push(_str(m), tuple(decode_pushed_item(x) for x in _arr(items)), hops)


def _dec_offer(b: Any) -> Offer:
    m, es = _arr(b, 2)
    entries = []
    for e in _bounded(es):
        k, rv, pv, h = _arr(e, 4)
        entries.append((_key(k), _version(rv), _version(pv), _bin(h, OFFER_HASH_LEN)))
    return Offer(_str(m), tuple(entries))


def _dec_want(b: Any) -> Want:
    m, ks = _arr(b, 2)
    return Want(_str(m), tuple(_key(k) for k in _bounded(ks)))


#: This module's part of the protocol table (:data:`smegmesh.core.wire.PROTOCOL`).
#: All may go as one datagram: merging a push twice changes nothing, an offer
#: only reads state (safe to run twice).
CODECS = (
    Codec(
        13,
        Push,
        lambda m: [m.mesh_id, [encode_item(i) for i in m.items], m.hops],
        _dec_push,
        dgram_request=True,
    ),
    Codec(
        14,
        Offer,
        lambda m: [m.mesh_id, [list(e) for e in m.entries]],
        _dec_offer,
        dgram_request=True,
    ),
    Codec(15, Want, lambda m: [m.mesh_id, list(m.keys)], _dec_want, dgram_reply=True),
)
