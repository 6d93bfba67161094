"""What the gossip messages of a run were, finer than their type (``--kinds``).

The per-type traffic table says how many ``Push``, ``Ack``, ``Offer`` and
``Want`` messages a run sent; finding where churn bytes go needs more: how
many pushes were late in a change's spread (hops ``MAX_HOPS``: answers to a
``Want``, and forwards of what came in one) and at which hop the others
were, what the pushes carried, how many push acks said "nothing new to me"
(the pusher's feedback) and for which pushes, how many wants were empty and
how many keys the others named. docs/SCALE.md sections 6 and 7 were
measured with these counts. Pure: :func:`tally` reads one message.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from msgpack import packb

from smegmesh.core.codec import ITEM_DELTA, ITEM_PRUNE, ITEM_RECORD, Elided, encode_item
from smegmesh.core.meshnode import SYNCED_HOPS
from smegmesh.core.messages import Ack
from smegmesh.core.offer import MAX_HOPS, Offer, Push, Want
from smegmesh.core.sync_messages import SyncStep

__all__ = ["HOP_BUCKETS", "tally"]

#: Hop counts of forwarded pushes are counted one by one below this; higher
#: ones share a bucket up to ``SYNCED_HOPS`` (items a sync session brought
#: forward from there: their own bucket).
HOP_BUCKETS = 9
_ELIDED_NAMES = {ITEM_RECORD: "record", ITEM_PRUNE: "prune", ITEM_DELTA: "delta"}


def _push_kind(push: Push, fine: bool = True) -> str:
    """Where in a change's spread ``push`` is: late, a hop, or from a sync.

    Late (hops ``MAX_HOPS``): a push answering a ``Want``, or the forward of
    items that came in one (``MeshNode._push_now`` caps hops there); the
    count of wants naming keys bounds the answers among them.
    """
    if push.hops == MAX_HOPS:
        return "late (answers a want, or forwards such an answer)"
    if push.hops < HOP_BUCKETS:
        return f"hop {push.hops}" if fine else f"hop 0-{HOP_BUCKETS - 1}"
    if push.hops < SYNCED_HOPS:
        return f"hop {HOP_BUCKETS}-{SYNCED_HOPS - 1}"
    return "hop from a sync"


def _packed(obj: Any) -> int:
    return len(packb(obj, use_bin_type=True))


def _tally_step(kinds: Counter[str], step: SyncStep) -> None:
    """A background sync step's parts: tree nodes, leaves, items (by kind), wants; their bytes."""
    kinds["sync step: steps"] += 1
    kinds["sync step: nodes"] += len(step.nodes)
    kinds["sync step: bytes of nodes"] += _packed([[d, p, h] for d, p, h in step.nodes])
    kinds["sync step: leaf entries"] += sum(len(es) for _, _, es in step.leaves)
    kinds["sync step: bytes of leaves"] += _packed(
        [[d, p, [list(e) for e in es]] for d, p, es in step.leaves]
    )
    kinds["sync step: wants"] += len(step.wants)
    kinds["sync step: bytes of wants"] += _packed(list(step.wants))
    for item in step.items:
        name = type(item).__name__
        if isinstance(item, Elided):
            name = f"{name} {_ELIDED_NAMES.get(item.kind, item.kind)}"
        kinds[f"sync step: item {name}"] += 1
        kinds[f"sync step: bytes of items {name}"] += _packed(encode_item(item))


def tally(kinds: Counter[str], msg: Any, request: Any = None) -> None:
    """Add ``msg``'s kinds to ``kinds`` (other message types add nothing).

    ``request``: for a reply, the request it answers (a push's ack is then
    counted by where that push was in its change's spread).
    """
    if isinstance(msg, Push):
        kinds[f"push: {_push_kind(msg)}"] += 1
        kinds["push: items"] += len(msg.items)
        for item in msg.items:
            name = type(item).__name__
            if isinstance(item, Elided):
                name = f"{name} {_ELIDED_NAMES.get(item.kind, item.kind)}"
            kinds[f"push: item {name}"] += 1
            kinds[f"push: bytes of items {name}"] += len(
                packb(encode_item(item), use_bin_type=True)
            )
    elif isinstance(msg, Ack):
        if isinstance(request, Push):
            news = "news" if msg.ok else "nothing new"
            kinds[f"ack of a push: {news}"] += 1
            kinds[f"ack of a push ({_push_kind(request, fine=False)}): {news}"] += 1
    elif isinstance(msg, SyncStep):
        _tally_step(kinds, msg)
    elif isinstance(msg, Offer):
        kinds["offer: entries"] += len(msg.entries)
    elif isinstance(msg, Want):
        if msg.keys:
            kinds["want: naming keys"] += 1
            kinds["want: keys"] += len(msg.keys)
        else:
            kinds["want: empty"] += 1
