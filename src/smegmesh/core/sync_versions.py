"""What one replica's entry has that another's lacks, by their versions. Pure.

A sync step's leaves (``core.sync``) list each key with the versions its
sender holds: its record's version + 1 and the version its prune covers + 1
(0: none). Comparing them says which side's items would change the other's
state, without sending them.
"""

from __future__ import annotations

from collections.abc import Iterable

from smegmesh.core.codec import Elided
from smegmesh.core.record import NodeRecord
from smegmesh.core.state import Item

__all__ = ["held_records_left_out", "newer", "prune_is_news"]


def prune_is_news(pv: int, tpv: int, trv: int) -> bool:
    """Whether a prune covering version ``pv`` (+1) changes a side holding ``trv``, ``tpv``.

    Newer than its prune and not moot: a newer record held there drops it
    (the state never keeps a prune its record outlives, ``StateStore._install``).
    """
    return pv > tpv and pv >= trv


def newer(rv: int, pv: int, trv: int, tpv: int) -> bool:
    """Whether one side has an item that changes the other, by their versions.

    One side holds record and prune versions ``rv``, ``pv`` (+1; 0: none),
    the other ``trv``, ``tpv``. A record changes it if newer than its record
    (one its prune kills is kept too); a prune as :func:`prune_is_news` says.
    Under churn one side may hold the prune of a member's last life and the
    other its new record: that prune is no news to the other side (a session
    sent it, whole, 3.4 KB in a founded mesh, for the other side to drop).
    """
    return rv > trv or prune_is_news(pv, tpv, trv)


def held_records_left_out(items: Iterable[Item], same_record: set[bytes]) -> list[Item | Elided]:
    """``items`` without the records of ``same_record``'s keys.

    Those keys are sent for their prune; the other side holds the very
    version of the record (its leaf said so): it is no news to it, and a
    prune by reference names it (``core.sync_refs``).
    """
    return [i for i in items if not (type(i) is NodeRecord and i.wg_key in same_record)]
