"""The mutual-best choice of direct partners, kept up to date as candidates come and go. Pure.

:func:`~smegmesh.core.direct.choose_direct` decides from scratch: this
client's best ``limit`` candidates by pair score, and for each of them its own
best ``limit``, ``(limit + 1) x N`` keyed hashes for ``N`` candidates (3,000
clients and ``directPeers`` 64: about 0.3 s of CPU). It ran again whenever any
record changed (a member may re-sign its record at will), on the event loop.

:class:`DirectChoice` gives the same answer and keeps what it computed: the
exact best ``limit + slack`` of this client and of each client in that list.
A candidate added costs one hash per list; one removed costs nothing unless a
list falls under ``limit`` (then that one list is computed again); a client
entering our best ``limit`` costs one list (``N`` hashes). So a member that
drops its endpoints and publishes them again costs most clients
``limit + slack`` hashes, and the few that have it in their lists ``N`` or so,
instead of everybody ``(limit + 1) x N``. An unchanged candidate set costs
nothing. :attr:`DirectChoice.hashes` counts the work.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = ["DirectChoice", "best_of", "scores"]

_BASE = hashlib.blake2b(digest_size=8, person=b"smeg-direct")


def scores(owner: bytes, keys: Iterable[bytes]) -> list[bytes]:
    """``pair_score(owner, k)`` for each of ``keys`` (about twice as fast, same values)."""
    prefix = _BASE.copy()  # the hash of the two keys in sorted order
    prefix.update(owner)
    out = []
    for k in keys:
        if k > owner:
            h = prefix.copy()
            h.update(k)
        else:
            h = _BASE.copy()
            h.update(k)
            h.update(owner)
        out.append(h.digest())
    return out


def best_of(owner: bytes, keys: Collection[bytes], n: int) -> list[tuple[bytes, bytes]]:
    """The ``n`` best ``(score, key)`` of ``keys`` but ``owner``, worst first."""
    others = [k for k in keys if k != owner]
    return sorted(heapq.nlargest(n, zip(scores(owner, others), others, strict=True)))


@dataclass(slots=True)
class _Best:
    """The exact best ``len(items)`` others of ``owner`` among the candidates."""

    owner: bytes
    items: list[tuple[bytes, bytes]]  # (score, key), worst first
    keys: set[bytes]
    complete: bool  # every other candidate is in it

    def rank(self, key: bytes) -> int | None:
        """0 for the best; None if not in the list."""
        if key not in self.keys:
            return None
        return next(i for i, (_, k) in enumerate(reversed(self.items)) if k == key)

    def top(self, n: int) -> list[bytes]:
        return [k for _, k in self.items[-n:]] if n > 0 else []


@dataclass
class DirectChoice:
    """The clients ``me`` holds direct sessions with: mutual best ``limit`` (see module doc).

    Call :meth:`update` with the candidate keys (live clients that publish an
    endpoint) whenever they may have changed; :attr:`chosen` is the answer.
    """

    me: bytes
    limit: int
    slack: int = -1  # extra entries kept per list (-1: max(4, limit // 2))
    candidates: frozenset[bytes] = frozenset()
    chosen: frozenset[bytes] = frozenset()
    #: keyed hashes computed so far (the work)
    hashes: int = 0
    _mine: _Best | None = None
    _lists: dict[bytes, _Best] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.slack < 0:
            self.slack = max(4, self.limit // 2)

    @property
    def cap(self) -> int:
        """How many entries each list keeps (``limit + slack``)."""
        return self.limit + self.slack

    def _scan(self, owner: bytes) -> _Best:
        items = best_of(owner, self.candidates, self.cap)
        self.hashes += len(self.candidates) - (owner in self.candidates)
        complete = len(items) >= len(self.candidates) - (owner in self.candidates)
        return _Best(owner, items, {k for _, k in items}, complete)

    def update(self, candidates: Collection[bytes]) -> frozenset[bytes]:
        """Take the new candidate set into account; returns :attr:`chosen`."""
        new = candidates if isinstance(candidates, frozenset) else frozenset(candidates)
        if new == self.candidates and (self._mine is not None or self.me not in new):
            return self.chosen
        added, removed = new - self.candidates, self.candidates - new
        self.candidates = new
        if self.limit <= 0 or self.me not in new:
            self._mine, self._lists, self.chosen = None, {}, frozenset()
            return self.chosen
        if self._mine is None or 2 * len(added) > len(new):  # most of it is new: start over
            self._mine, self._lists = self._scan(self.me), {}
        else:
            for key in removed:
                self._lists.pop(key, None)
            for b in (self._mine, *self._lists.values()):
                self._apply(b, added, removed)
        mine = self._mine
        # keep the lists of the clients in ours (one that drops out of our best
        # `limit` may come back), compute the missing ones of our best `limit`
        self._lists = {o: b for o, b in self._lists.items() if o in mine.keys}
        for o in mine.top(self.limit):
            if o not in self._lists:
                self._lists[o] = self._scan(o)
        self.chosen = frozenset(o for o in mine.top(self.limit) if self._mutual(o))
        return self.chosen

    def _mutual(self, other: bytes) -> bool:
        rank = self._lists[other].rank(self.me)
        return rank is not None and rank < self.limit

    def _apply(self, b: _Best, added: Collection[bytes], removed: Collection[bytes]) -> None:
        """Keep ``b`` the exact best of the candidates: drop ``removed``, rank ``added``."""
        gone = b.keys.intersection(removed)
        if gone:
            b.items = [it for it in b.items if it[1] not in gone]
            b.keys -= gone
        news = [k for k in added if k != b.owner]
        if news:
            self.hashes += len(news)
            for item in zip(scores(b.owner, news), news, strict=True):
                if b.complete or (b.items and item > b.items[0]):
                    bisect.insort(b.items, item)
                    b.keys.add(item[1])
            while len(b.items) > self.cap:
                b.keys.discard(b.items.pop(0)[1])
                b.complete = False
        if not b.complete and len(b.items) < self.limit:
            fresh = self._scan(b.owner)  # fell under `limit`: what follows is unknown
            b.items, b.keys, b.complete = fresh.items, fresh.keys, fresh.complete
