"""Items pushed without the parts their receiver already holds. Pure.

In a mesh with admission (every founded mesh) a record carries its admission
chain, a certificate per level of the admission tree (~230 B each; about 9
levels at 3,000 members: 2.0 KB of a 2.3 KB record), and a prune carries its
target's signed record and its pruner's chain (3.7 KB). What churn gossips is
mostly new versions of records every node has held for long (a restart: the
same key and chain) and prunes of records every node holds: at 1,000 nodes
and 20 %/min churn, 121.6 KB/s per node with admission against 17.4 without
(the simulator, twentieth session; docs/SCALE.md).

So a gossip push sends, in place of such a part, a reference to what its
receiver holds (:class:`~smegmesh.core.codec.Elided`):

* a record's chain: :data:`REF_LEN` bytes of a hash of its sign key and its
  certificates' keys, when its last certificate was issued
  :data:`SETTLED_MS` ago or more (every member has held the record for
  long); the record then names its key by id (:data:`KEY_ID_LEN` bytes) and
  leaves out its sign key (bound to the key, whose X25519 form it is, and
  named by the reference as well) and what the receiver derives: the mesh id
  (the message's) and the overlay address (of the mesh id and the key);
* a prune's target record: :data:`REF_LEN` bytes of the hash of its
  signature, when the record was published :data:`RECORD_SETTLED_MS` ago or
  more; the target is then named by id;
* a prune's pruner chain: as a record's chain (the receiver holds the
  pruner's record), the pruner named by id, its sign key left out;
* an elided prune leaves out the mesh id.

The receiver puts the parts back from its own state (:func:`expand`) and
checks the item as any other: the signatures cover the parts, so a reference
cannot change what is signed. A reference it cannot resolve (it lacks that
record, or holds another) leaves the item out, and the node pulls what it
lacks with a sync session (``ExchangeMixin``). Only what would change the
state is expanded, at most :data:`MAX_EXPANDED` items a message: a member
cannot make us decode much more than it sent. Sync steps use references
only where the other side showed it holds the parts (``core.sync_refs``).
Join replies, the answers to a ``Want`` naming a key by id, and pushes to a
member about itself or to a member that does not know us carry whole items.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from smegmesh.core.addressing import overlay_address
from smegmesh.core.cert import Cert
from smegmesh.core.codec import ITEM_DELTA, ITEM_PRUNE, ITEM_RECORD, KEY_ID_LEN, Elided
from smegmesh.core.delta import (
    SHORT_REF_LEN,
    base_ref,
    base_size,
    expand_delta,
    names,
    names_record,
    short_time,
)
from smegmesh.core.record import NodeRecord, Prune, RecordError, prune_from_obj, record_from_obj
from smegmesh.core.record_model import (
    WIRE_ADDRESS,
    WIRE_CHAIN,
    WIRE_KEY,
    WIRE_MESH,
    WIRE_SIGN_KEY,
    WIRE_VERSION,
)
from smegmesh.core.state import Item, MeshState

__all__ = [
    "DELTA_BASES_PER_MESSAGE",
    "MAX_EXPANDED",
    "RECORD_SETTLED_MS",
    "REF_LEN",
    "SETTLED_MS",
    "Expanded",
    "elide",
    "elide_news",
    "elided_record_key",
    "expand",
    "expand_again",
    "shortened",
]

#: A certificate issued this long ago is in every member's state (with the
#: record of the member it admitted).
SETTLED_MS = 5 * 60 * 1000
#: A record published this long ago has reached every member (a change reaches
#: all of 3,000 in ~2.5 s at p99.9 in the simulator).
RECORD_SETTLED_MS = 10_000
#: Bytes of a hash that name a record (of its signature) or a chain (of its
#: sign key and its certificates' keys) in place of it. A push to a member
#: that takes them names both by ``delta.SHORT_REF_LEN`` (:func:`shortened`).
REF_LEN = 16
#: Elided items expanded at most per message (the rest is pulled by sync).
MAX_EXPANDED = 256
#: Bytes of held records that deltas (core.delta) may rebuild per message:
#: ~100 founded records of a few KB (an honest push carries a batch of a few;
#: past it the rest is pulled by sync, as past MAX_EXPANDED).
DELTA_BASES_PER_MESSAGE = 256 * 1024

# indexes in a record's wire form (record_model), and in a prune's
_MESH, _KEY, _SIGN, _ADDRESS, _CHAIN = WIRE_MESH, WIRE_KEY, WIRE_SIGN_KEY, WIRE_ADDRESS, WIRE_CHAIN
_TARGET, _BY, _BY_SIGN, _TARGET_RECORD, _BY_CHAIN = 1, 3, 4, 6, 7


def _chain_ref(sign_key: bytes, chain: Sequence[Cert]) -> bytes:
    """A signer's name: its sign key and all its chain's certificates' keys, hashed.

    Any change, another name.
    """
    return _chain_hash(sign_key, chain)[:REF_LEN]


def _chain_hash(sign_key: bytes, chain: Sequence[Cert]) -> bytes:
    return hashlib.sha256(sign_key + b"".join(c.key for c in chain)).digest()


def _settled_chain(chain: Sequence[Any], now_ms: int) -> bool:
    return bool(chain) and chain[-1].issued_ms <= now_ms - SETTLED_MS


def elide_news(news: Sequence[Item], now_ms: int) -> tuple[list[Item], list[Item | Elided]]:
    """What changed (``news``) as a push sends it: ``(items, the same elided)``.

    A prune of a record published less than :data:`RECORD_SETTLED_MS` ago (a
    member that crashed soon after a restart: ~3 % of prunes at 20 % churn a
    minute, ~10 % at 60 %) carried that record whole, admission chain and all
    (~2.3 KB in a founded mesh of 1,000). It now names the record by
    reference like any prune, and the record goes in front of it (a delta or
    an elided record, ~120-220 B): a receiver that holds it (almost every
    one, as it spread seconds before) drops that copy unexpanded, one that
    does not takes it and then resolves the prune (:func:`expand_again`).
    """
    items: list[Item] = []
    sent: list[Item | Elided] = []
    for it in news:
        tr = it.target_record if type(it) is Prune else None
        if tr is not None and tr.timestamp_ms > now_ms - RECORD_SETTLED_MS and tr.chain:
            items.append(tr)
            sent.append(elide(tr, now_ms))
            sent.append(elide(it, now_ms, target_by_ref=True))
        else:
            sent.append(elide(it, now_ms))
        items.append(it)
    return items, sent


def elide(item: Item, now_ms: int, *, target_by_ref: bool = False) -> Item | Elided:
    """``item`` as a push sends it: with references for the parts every member holds.

    ``target_by_ref``: a prune names its target record by reference however
    young (its receiver holds that record, or gets it in the same message).
    """
    if type(item) is NodeRecord:
        if not _settled_chain(item.chain, now_ms):
            return item
        fields = item.to_obj()
        fields[_CHAIN] = _chain_ref(item.sign_key, item.chain)
        fields[_KEY] = item.wg_key[:KEY_ID_LEN]
        fields[_MESH] = fields[_SIGN] = fields[_ADDRESS] = None
        return Elided(ITEM_RECORD, tuple(fields))
    if type(item) is Prune:
        tr = item.target_record
        short_tr = tr is not None and (
            target_by_ref or tr.timestamp_ms <= now_ms - RECORD_SETTLED_MS
        )
        short_chain = _settled_chain(item.by_chain, now_ms)
        if not (short_tr or short_chain):
            return item
        fields = item.to_obj()
        fields[_MESH] = None
        if short_tr:
            assert tr is not None
            fields[_TARGET_RECORD] = base_ref(tr)
            fields[_TARGET] = item.target[:KEY_ID_LEN]
        if short_chain:
            fields[_BY_CHAIN] = _chain_ref(item.by_sign_key, item.by_chain)
            fields[_BY] = item.by_wg_key[:KEY_ID_LEN]
            fields[_BY_SIGN] = None
        return Elided(ITEM_PRUNE, tuple(fields))
    return item


def shortened(item: Any) -> Any:
    """``item`` as a push sends it to a member that takes short names and times.

    An elided item's names (a record's chain, a prune's target record and
    pruner chain, a delta's base) are cut to ``delta.SHORT_REF_LEN`` bytes and a
    delta's time goes as its offset from the version (``delta.short_time``);
    anything else goes as it is. A node of before takes neither, so only a
    member whose ack said so (``delta.TAKES_SHORT``) gets them.
    """
    if type(item) is not Elided:
        return item
    f = list(item.fields)
    if item.kind == ITEM_DELTA:
        return short_time(Elided(ITEM_DELTA, (f[0], f[1][:SHORT_REF_LEN], *f[2:])))
    for i in (_CHAIN,) if item.kind == ITEM_RECORD else (_TARGET_RECORD, _BY_CHAIN):
        if type(f[i]) is bytes:
            f[i] = f[i][:SHORT_REF_LEN]
    return Elided(item.kind, tuple(f))


@dataclass(slots=True)
class Expanded:
    """What :func:`expand` made of a message's items."""

    items: list[Item] = field(default_factory=list)
    #: elided items made whole from this state
    resolved: int = 0
    #: references this state could not resolve (pulled by a sync session)
    unresolved: int = 0
    #: the held keys of those (an item naming a key not held has none)
    missing: list[bytes] = field(default_factory=list)
    #: elided items that are malformed (the sender's fault)
    errors: list[RecordError] = field(default_factory=list)


def _key(mesh: MeshState, key_id: object) -> bytes | None:
    """The held key ``key_id`` names (a key id, or a whole key that is held)."""
    if type(key_id) is not bytes:
        return None
    if len(key_id) == KEY_ID_LEN:
        return mesh.key_by_prefix(key_id)
    return key_id if len(key_id) == 32 and key_id in mesh else None


def elided_record_key(mesh: MeshState, item: object) -> bytes | None:
    """The held key an elided record names (None: not an elided record, or not held)."""
    if type(item) is not Elided or item.kind not in (ITEM_RECORD, ITEM_DELTA):
        return None
    return _key(mesh, item.fields[_where(item.kind)[0]])


def _signer(mesh: MeshState, key_id: object, ref: object) -> NodeRecord | None:
    """The held record of ``key_id`` if its sign key and chain are the ones named ``ref``."""
    key = _key(mesh, key_id)
    rec = mesh.record(key) if key is not None else None
    if rec is None or not rec.chain:
        return None
    return rec if names(ref, _chain_hash(rec.sign_key, rec.chain)) else None


def _news(mesh: MeshState, e: Elided, key: bytes | None) -> bool:
    """Whether ``e`` (naming the held ``key``) could change the state (cheap checks)."""
    version = e.fields[_where(e.kind)[1]]
    if key is None or type(version) is not int:
        return True  # not held, or malformed: let expansion say which
    held = mesh.record(key)
    if e.kind != ITEM_PRUNE:
        return held is None or version > held.version
    if held is not None and held.version > version:
        return False  # moot: a newer record is held
    pr = mesh.get_prune(key)
    return pr is None or version >= pr.target_version


def _left_out(f: Sequence[Any], *indexes: int) -> None:
    """Raises unless the fields an elided item leaves out are left out."""
    if any(f[i] is not None for i in indexes):
        raise RecordError("item", "an elided item carries a part it leaves out")


def _expand_record(mesh: MeshState, f: list[Any]) -> Item | None:
    _left_out(f, _MESH, _SIGN, _ADDRESS)
    if type(f[_CHAIN]) is not bytes or type(f[_KEY]) is not bytes:
        raise RecordError("item", "an elided record names its chain and its key by reference")
    held = _signer(mesh, f[_KEY], f[_CHAIN])
    if held is None:
        return None
    f[_MESH], f[_KEY], f[_SIGN] = mesh.mesh_id, held.wg_key, held.sign_key
    f[_ADDRESS] = str(overlay_address(mesh.mesh_id, held.wg_key))
    f[_CHAIN] = []
    return replace(record_from_obj(f), chain=held.chain)


def _expand_prune(mesh: MeshState, f: list[Any]) -> Item | None:
    _left_out(f, _MESH)
    f[_MESH] = mesh.mesh_id
    parts: dict[str, Any] = {}
    if type(f[_TARGET_RECORD]) is bytes:
        target = _key(mesh, f[_TARGET])
        held = mesh.record(target) if target is not None else None
        if held is None or held.version != f[2] or not names_record(f[_TARGET_RECORD], held):
            return None
        parts["target_record"] = held
        f[_TARGET], f[_TARGET_RECORD] = held.wg_key, None
    if type(f[_BY_CHAIN]) is bytes:
        _left_out(f, _BY_SIGN)
        by = _signer(mesh, f[_BY], f[_BY_CHAIN])
        if by is None:
            return None
        parts["by_chain"] = by.chain
        f[_BY], f[_BY_SIGN], f[_BY_CHAIN] = by.wg_key, by.sign_key, []
    if not parts:
        raise RecordError("item", "an elided prune names no part by reference")
    return replace(prune_from_obj(f), **parts)


#: Where an elided item of each kind names its key, and the version it is about.
_WHERE = {ITEM_RECORD: (_KEY, WIRE_VERSION), ITEM_DELTA: (0, 2), ITEM_PRUNE: (_TARGET, 2)}


def _where(kind: int) -> tuple[int, int]:
    return _WHERE.get(kind, _WHERE[ITEM_PRUNE])


def _expand_one(mesh: MeshState, e: Elided, key: bytes | None) -> Item | None:
    """The whole item (None: a reference this state cannot resolve); raises RecordError.

    The parts put back are the held objects themselves (shared, not decoded
    again: a held target record is known to be signed), in place of an empty
    part the decoder checks as ever; the mesh id is this state's, the address
    derived from it and the key, as the checks of a whole item require.
    """
    if e.kind == ITEM_RECORD:
        return _expand_record(mesh, list(e.fields))
    if e.kind == ITEM_PRUNE:
        return _expand_prune(mesh, list(e.fields))
    if e.kind == ITEM_DELTA:
        return expand_delta(mesh.record(key) if key is not None else None, e.fields)
    raise RecordError("item", "unknown elided kind")


def expand(mesh: MeshState, items: Iterable[Item | Elided]) -> Expanded:
    """A pushed message's items made whole from ``mesh`` (see the module docstring).

    Elided items that would not change the state are dropped unexpanded (as
    :meth:`MeshState.apply_many` drops whole ones unchecked), and so is a
    second elided record (or prune) of a key in one message: expanding costs
    work by what is held, and one message names a key once. Deltas rebuild at
    most :data:`DELTA_BASES_PER_MESSAGE` bytes of held records a message.
    """
    out = Expanded()
    budget, bases = MAX_EXPANDED, DELTA_BASES_PER_MESSAGE
    seen: set[tuple[bool, bytes]] = set()
    for it in items:
        if not isinstance(it, Elided):
            out.items.append(it)
            continue
        key = _key(mesh, it.fields[_where(it.kind)[0]])
        slot = (it.kind == ITEM_PRUNE, key or b"")
        if not _news(mesh, it, key) or (key is not None and slot in seen):
            continue
        seen.add(slot)
        held = mesh.record(key) if key is not None and it.kind == ITEM_DELTA else None
        bases -= 0 if held is None else base_size(held)
        if budget <= 0 or bases < 0:
            out.unresolved += 1
            continue
        budget -= 1
        try:
            whole = _expand_one(mesh, it, key)
        except RecordError as err:
            out.errors.append(err)
            continue
        except Exception as err:  # the decoders may raise anything on garbage
            out.errors.append(RecordError("item", f"malformed: {type(err).__name__}"))
            continue
        if whole is None:
            out.unresolved += 1
            if key is not None:
                out.missing.append(key)
        else:
            out.resolved += 1
            out.items.append(whole)
    return out


def expand_again(mesh: MeshState, items: Sequence[Item | Elided], got: Expanded) -> list[Item]:
    """The elided items of ``items`` that ``got`` left missing, made whole now.

    For after ``got.items`` were applied: a prune names by reference the
    record that came in front of it in the same message (:func:`elide_news`,
    and a sync step's ``core.sync_refs``). Only the items of the keys ``got``
    left missing are looked at again, so a message costs at most one more
    look-up an item. ``got``'s counts and missing keys move to what stays
    unresolved.
    """
    missing = set(got.missing)
    again = expand(
        mesh,
        [
            i
            for i in items
            if type(i) is Elided and _key(mesh, i.fields[_where(i.kind)[0]]) in missing
        ],
    )
    got.resolved += again.resolved
    got.unresolved -= again.resolved
    got.missing = again.missing
    return again.items
