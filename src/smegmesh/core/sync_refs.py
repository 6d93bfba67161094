"""Anti-entropy steps by reference: between two nodes that both take them. Pure.

A sync step (``core.sync``) carried its items whole: in a founded mesh a
record with its admission chain (2.1 KB at 300 members, of which the chain
2.0 KB) and a prune with its target record and its pruner's chain (3.2 KB),
where the other side held those parts already. The leaves a session
exchanges say what the other side holds of each key, so a step sends it
items by reference (``core.elide``) where it holds the parts: a record when it
holds a record of the key (the chain is the same unless the member was
admitted again), a prune when it holds the record pruned. What it cannot
resolve it wants whole in its next step, in the same session.

Older nodes decode no reference in a step, so both sides say they take them
in bits of the session id that older nodes neither set nor read
(:data:`TAKES_REFS`, :data:`RESPONDER_TAKES_REFS`), and a side that takes
them wants a key it holds a record of by its id (references will do), any
other by the whole key (send it whole).
"""

from __future__ import annotations

from collections.abc import Iterable

from smegmesh.core.codec import Elided
from smegmesh.core.elide import MAX_EXPANDED, elide
from smegmesh.core.record import NodeRecord, Prune
from smegmesh.core.state import Item, MeshState

__all__ = [
    "HOLDS_A_RECORD",
    "RESPONDER_TAKES_REFS",
    "TAKES_REFS",
    "by_reference",
    "note_wants",
]

#: Bits of a session id above its 32 random ones. An initiator that takes items
#: by reference (``core.elide``) sets TAKES_REFS; a responder that does too
#: answers such a session under the id with RESPONDER_TAKES_REFS set as well.
#: Older nodes neither set nor echo them (an older responder answers under the
#: id as sent; an older initiator sets neither), so a side sends references
#: only to a side that said it takes them.
TAKES_REFS = 1 << 32
RESPONDER_TAKES_REFS = 1 << 33
#: A side that takes references wants a key it holds a record of by its id
#: (``KEY_ID_LEN`` bytes: by reference will do), one it lacks or could not
#: resolve by the whole key (send it whole). Its record's version is unknown
#: then: this stands for it.
HOLDS_A_RECORD = -1


def note_wants(
    state: MeshState, wants: Iterable[bytes], sent: set[bytes], held: dict[bytes, int]
) -> None:
    """The other side's wants: their keys go into ``sent``, and ``held`` says how.

    A key wanted whole is sent whole; one wanted by id (a key we hold whose
    id names exactly one key) by reference where settled.
    """
    whole: set[bytes] = set()
    for w in wants:
        key = w if len(w) == 32 else state.key_by_prefix(w)
        if key is None:
            continue
        sent.add(key)
        if len(w) == 32:
            whole.add(key)
        elif key not in whole:
            held[key] = HOLDS_A_RECORD
    for key in whole:  # whole wins over an id in the same step
        held.pop(key, None)


def by_reference(
    items: list[Item | Elided], held: dict[bytes, int], now_ms: int
) -> list[Item | Elided]:
    """``items`` for a side that takes references, elided where it holds the parts.

    ``held``: key -> the other side's record version + 1 (its leaf's entry),
    or :data:`HOLDS_A_RECORD` (it wanted the key by id). A record goes by
    reference (its chain named) when the other side holds a record of its key,
    a prune when it holds the very record pruned or a record of its key
    (``core.elide``'s rules then say which parts are settled enough to leave
    out; what it cannot resolve it wants again, whole). At most
    :data:`~smegmesh.core.elide.MAX_EXPANDED` a step: what the receiver
    expands is bounded.
    """
    out: list[Item | Elided] = []
    budget = MAX_EXPANDED
    records = {(i.wg_key, i.version) for i in items if type(i) is NodeRecord}
    for it in items:
        if budget > 0 and (
            (type(it) is NodeRecord and held.get(it.wg_key, 0) != 0)
            or (
                type(it) is Prune and held.get(it.target) in (it.target_version + 1, HOLDS_A_RECORD)
            )
        ):
            # a prune of the very record the other side holds, or that goes in
            # front of it, names it however young
            exact = type(it) is Prune and (
                held.get(it.target) == it.target_version + 1
                or (it.target, it.target_version) in records
            )
            e = elide(it, now_ms, target_by_ref=exact)
            if e is not it:
                budget -= 1
            it = e
        out.append(it)
    return out
