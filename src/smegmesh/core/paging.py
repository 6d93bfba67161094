"""Byte-bounded pages of items: no message carries more than about one page.

A mesh's state may be far larger than one message (10,000 members, or a few
members with maximal records); whatever carries items (a join reply, an
anti-entropy step, a push) takes them a page at a time: items in their given
order while the encoded total stays within ``budget`` bytes, and always at
least one (a single item is bounded by the record limits, well below the
transport's message cap). The rest travels in later messages or sessions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import msgpack

from smegmesh.core.cert import AuthItem
from smegmesh.core.codec import Elided, encode_item
from smegmesh.core.memo import ItemMemo
from smegmesh.core.record import NodeRecord, Prune

__all__ = ["PAGE_BYTES", "encode_items", "item_bytes", "item_size", "page", "pages"]

#: Target encoded size of the items of one message (the transport allows 1 MiB).
PAGE_BYTES = 512 * 1024

Item = NodeRecord | Prune | AuthItem | Elided
#: what a page holds: the items it was given (whole ones, or a push's elided ones too)
T = TypeVar("T", NodeRecord | Prune | AuthItem, NodeRecord | Prune | AuthItem | Elided)


def item_size(item: Item, memo: ItemMemo | None = None) -> int:
    """Encoded size of ``item`` inside a message (msgpack of ``encode_item``).

    With ``memo`` (the state's :class:`~smegmesh.core.memo.ItemMemo`) a size is
    measured once per item object.
    """
    if type(item) is Elided:  # made for one push: not worth a memo entry
        memo = None
    n = None if memo is None else memo.size(item)
    if n is None:
        n = len(msgpack.packb(encode_item(item), use_bin_type=True))
        if memo is not None:
            memo.note_size(item, n)
    return n


def item_bytes(item: Item, memo: ItemMemo | None = None) -> bytes:
    """``item`` encoded (msgpack of ``encode_item``); with ``memo``, once per item object."""
    if type(item) is Elided:
        memo = None
    data = None if memo is None else memo.encoded(item)
    if data is None:
        data = msgpack.packb(encode_item(item), use_bin_type=True)
        if memo is not None:
            memo.note_encoded(item, data)
    return data


def encode_items(items: Sequence[Item], memo: ItemMemo | None = None) -> bytes:
    """The msgpack array of the items' encodings: ``packb([encode_item(i) for i in items])``.

    With ``memo`` each item is encoded once in its life (the persist loop
    re-writes a state in which few items changed since the last write).
    """
    head = msgpack.Packer(use_bin_type=True).pack_array_header(len(items))
    return head + b"".join(item_bytes(i, memo) for i in items)


def page(
    items: Iterable[T], budget: int = PAGE_BYTES, memo: ItemMemo | None = None
) -> tuple[list[T], bool]:
    """The longest prefix of ``items`` within ``budget`` bytes (at least one item).

    Returns ``(page, truncated)``; ``truncated`` says items were left out.
    ``memo``: see :func:`item_size`.
    """
    if isinstance(items, list | tuple) and len(items) <= 1:
        return list(items), False  # one item always goes (the common push)
    out: list[T] = []
    used = 0
    for item in items:
        n = item_size(item, memo)
        if out and used + n > budget:
            return out, True
        out.append(item)
        used += n
    return out, False


def pages(
    items: Iterable[T], budget: int = PAGE_BYTES, memo: ItemMemo | None = None
) -> list[list[T]]:
    """All of ``items`` split into consecutive pages of at most ``budget`` bytes each."""
    if isinstance(items, list | tuple) and len(items) <= 1:
        return [list(items)] if items else []
    out: list[list[T]] = []
    cur: list[T] = []
    used = 0
    for item in items:
        n = item_size(item, memo)
        if cur and used + n > budget:
            out.append(cur)
            cur, used = [], 0
        cur.append(item)
        used += n
    if cur:
        out.append(cur)
    return out
