"""What the gossip messages of a run were, finer than their type (``--kinds``).

The per-type traffic table says how many ``Push``, ``Ack``, ``Offer`` and
``Want`` messages a run sent; finding where churn bytes go needs more: how
many pushes answered a ``Want`` (hops ``MAX_HOPS``: late in a change's spread)
and at which hop the others were, what the pushes carried, how many push
acks said "nothing new to me" (the pusher's feedback), how many wants were
empty and how many keys the others named. docs/SCALE.md section 6 was
measured with these counts. Pure: :func:`tally` reads one message.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from smegmesh.core.meshnode import SYNCED_HOPS
from smegmesh.core.messages import Ack
from smegmesh.core.offer import MAX_HOPS, Offer, Push, Want

__all__ = ["HOP_BUCKETS", "tally"]

#: Hop counts of forwarded pushes are counted one by one below this; higher
#: ones share a bucket up to ``SYNCED_HOPS`` (items a sync session brought
#: forward from there: their own bucket).
HOP_BUCKETS = 9


def tally(kinds: Counter[str], msg: Any) -> None:
    """Add ``msg``'s kinds to ``kinds`` (other message types add nothing)."""
    if isinstance(msg, Push):
        if msg.hops == MAX_HOPS:
            kinds["push: answers a want"] += 1
        else:
            if msg.hops < HOP_BUCKETS:
                kinds[f"push: hop {msg.hops}"] += 1
            elif msg.hops < SYNCED_HOPS:
                kinds[f"push: hop {HOP_BUCKETS}-{SYNCED_HOPS - 1}"] += 1
            else:
                kinds["push: hop from a sync"] += 1
        kinds["push: items"] += len(msg.items)
        for item in msg.items:
            kinds[f"push: item {type(item).__name__}"] += 1
    elif isinstance(msg, Ack):
        if msg.probe_id == 0:  # a push's ack (a probe's carries its probe id)
            kinds["ack of a push: news" if msg.ok else "ack of a push: nothing new"] += 1
    elif isinstance(msg, Offer):
        kinds["offer: entries"] += len(msg.entries)
    elif isinstance(msg, Want):
        if msg.keys:
            kinds["want: naming keys"] += 1
            kinds["want: keys"] += len(msg.keys)
        else:
            kinds["want: empty"] += 1
