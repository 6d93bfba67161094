"""An explicit, bounded memo of facts about immutable items (records, prunes, statements).

Checking a record's fields, verifying its signature and measuring its encoded
size cost far more than a lookup, and the same item *object* often meets many
checks: a state re-offered an item it holds, several meshes' views, a
simulation where one object is delivered to hundreds of states. The facts are
kept here, outside the (frozen) items, in an :class:`ItemMemo` owned by
whoever builds the state (:class:`~smegmesh.core.state.MeshState` makes its
own unless given one; the simulator gives all its states one memo).

Entries are keyed by the object's identity and hold a *weak* reference to it:
the memo never keeps an item alive (a hostile peer's discarded items are freed
as before), and an entry goes when its object goes, so an ``id`` is never
taken for another object. At most ``max_items`` entries are kept, least
recently used first out. A fact is only ever a pure function of the immutable
object (the mesh id it passed the field checks for, whether its signature
verified, its encoded size and encoding), so a hit gives the same answer as recomputing,
and a miss only costs the recomputation. Items must support weak references
(the frozen, non-slotted dataclasses of records, prunes and statements do).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

__all__ = ["DEFAULT_MEMO_ITEMS", "ItemMemo"]

#: Default bound: a daemon's mesh holds at most 10,000 records (``maxMembers``);
#: the facts of the items of one busy mesh fit, memory stays a few MB.
DEFAULT_MEMO_ITEMS = 16_384


class _Facts(weakref.ref[Any]):
    """What is known of one object (``None``/``False``: not known); a weak reference to it."""

    __slots__ = ("checked_for", "encoded", "key", "sig_ok", "size")

    def __init__(self, obj: Any, callback: Any) -> None:
        # weakref.ref.__new__ took (obj, callback); __init__ only adds the facts
        self.key = id(obj)
        self.checked_for: str | None = None
        self.sig_ok = False
        self.size: int | None = None
        self.encoded: bytes | None = None


class ItemMemo:
    """Facts about immutable objects, by identity; at most ``max_items`` (LRU)."""

    __slots__ = ("_facts", "max_items")

    def __init__(self, max_items: int = DEFAULT_MEMO_ITEMS) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self._facts: OrderedDict[int, _Facts] = OrderedDict()

    def __len__(self) -> int:
        return len(self._facts)

    def _get(self, obj: object) -> _Facts | None:
        f = self._facts.get(id(obj))
        if f is None or f() is not obj:
            return None
        self._facts.move_to_end(id(obj))
        return f

    def _entry(self, obj: object) -> _Facts:
        f = self._get(obj)
        if f is None:
            f = self._facts[id(obj)] = _Facts(obj, self._gone)
            if len(self._facts) > self.max_items:
                self._facts.popitem(last=False)
        return f

    def _gone(self, ref: _Facts) -> None:
        """The object of ``ref`` is being freed: its entry goes (before its id is reused)."""
        key = ref.key
        if self._facts.get(key) is ref:
            del self._facts[key]

    def carry(self, old: object, new: object) -> None:
        """``new`` equals ``old`` (a copy sharing its parts): it takes what is known of it."""
        f = self._get(old)
        if f is None or old is new:
            return
        g = self._entry(new)
        g.checked_for = g.checked_for or f.checked_for
        g.sig_ok = g.sig_ok or f.sig_ok
        g.size = f.size if g.size is None else g.size
        g.encoded = f.encoded if g.encoded is None else g.encoded

    def checked_for(self, obj: object) -> str | None:
        """The mesh id ``obj`` passed its field checks for, if known."""
        f = self._get(obj)
        return None if f is None else f.checked_for

    def note_checked(self, obj: object, mesh_id: str) -> None:
        """``obj`` passed its field checks (signature length included) for ``mesh_id``."""
        self._entry(obj).checked_for = mesh_id

    def sig_ok(self, obj: object) -> bool:
        """True if ``obj``'s signature is known to verify."""
        f = self._get(obj)
        return f is not None and f.sig_ok

    def note_sig_ok(self, obj: object) -> None:
        """``obj``'s signature verified."""
        self._entry(obj).sig_ok = True

    def size(self, obj: object) -> int | None:
        """``obj``'s encoded size, if known."""
        f = self._get(obj)
        return None if f is None else f.size

    def note_size(self, obj: object, n: int) -> None:
        """``obj``'s encoded size is ``n``."""
        self._entry(obj).size = n

    def encoded(self, obj: object) -> bytes | None:
        """``obj``'s encoding (msgpack of ``encode_item``), if known."""
        f = self._get(obj)
        return None if f is None else f.encoded

    def note_encoded(self, obj: object, data: bytes) -> None:
        """``obj`` encodes to ``data`` (its size is then known too)."""
        f = self._entry(obj)
        f.encoded, f.size = data, len(data)
