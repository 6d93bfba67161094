"""Rendezvous (highest-random-weight) hashing.

``choose(key, candidates)`` picks the candidate with the highest score
``sha256(candidate + key)``. We use rendezvous hashing rather than a hash ring
(``uhashring``, ketama with 160 points per node) because, measured by
``bench/hashing_bench.py`` (3,000 random keys, mean of 5 candidate sets):

* it balances better where meshes are small: the most loaded of 3 peers gets
  1.02x the mean (ring 1.07x), coefficient of variation 0.019 (ring 0.060);
  at 10 peers 1.09x / 0.054 (ring 1.15x / 0.087); by 100 peers both approach
  the statistical floor (cv 0.183 vs 0.187);
* disruption is the same minimum for both: removing a candidate moves exactly
  the keys it had, none between survivors;
* there is nothing to tune (no virtual-node count) and no ring to rebuild or
  keep consistent between nodes: every node computes the same answer from the
  same candidate set;
* with at most a few thousand candidates (peers of a mesh, gateways of a
  route) O(n) hashes per choice are cheap (~1 µs each).

Ties (equal 32-byte scores) are impossible in practice; they are broken by the
candidate bytes so the result never depends on iteration order.

``key`` is what must not be predictable to whom: a node's *own* choices (its
gateways and exits, a client's peer) rank with its secret
``NodeIdentity.rank_key``, so nobody can make a candidate key that wins them;
a choice other nodes must make alike (the peer of a client whose published
peer is not live, ``core.desired.assigned_peer``) ranks with the public key.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator

__all__ = ["RankedSet", "choose", "ranked", "score"]


def score(key: bytes, candidate: bytes) -> bytes:
    """The weight of ``candidate`` for ``key`` (compare as bytes)."""
    return hashlib.sha256(candidate + key).digest()


def choose(key: bytes, candidates: Iterable[bytes]) -> bytes | None:
    """The candidate with the highest weight for ``key``; None if there is none."""
    best: bytes | None = None
    best_score = b""
    for c in candidates:
        s = score(key, c)
        if best is None or s > best_score or (s == best_score and c > best):
            best, best_score = c, s
    return best


def ranked(key: bytes, candidates: Iterable[bytes], limit: int | None = None) -> list[bytes]:
    """Distinct candidates ordered by decreasing weight (fallback order)."""
    uniq = set(candidates)
    order = sorted(uniq, key=lambda c: (score(key, c), c), reverse=True)
    return order if limit is None else order[:limit]


class RankedSet:
    """A set of candidates kept in :func:`ranked` order for ``key``, edited one at a time.

    Adding or removing a candidate costs a hash, a bisection and a memmove
    (not a hash of every candidate and a sort, as :func:`ranked` again would:
    ~3 ms at 3,000 candidates).
    """

    __slots__ = ("_asc", "_key", "_weight")

    def __init__(self, key: bytes, candidates: Iterable[bytes] = ()) -> None:
        self._key = key
        self._weight = {c: score(key, c) for c in candidates}
        self._asc = sorted((w, c) for c, w in self._weight.items())

    def add(self, candidate: bytes) -> None:
        """Rank ``candidate`` too (nothing if it is there)."""
        if candidate not in self._weight:
            w = self._weight[candidate] = score(self._key, candidate)
            bisect.insort(self._asc, (w, candidate))

    def discard(self, candidate: bytes) -> None:
        """Drop ``candidate`` (nothing if it is not there)."""
        w = self._weight.pop(candidate, None)
        if w is not None:
            del self._asc[bisect.bisect_left(self._asc, (w, candidate))]

    def __contains__(self, candidate: object) -> bool:
        return candidate in self._weight

    def __len__(self) -> int:
        return len(self._asc)

    def __iter__(self) -> Iterator[bytes]:
        """Candidates by decreasing weight (as :func:`ranked` lists them)."""
        return (c for _, c in reversed(self._asc))

    def first(self) -> bytes | None:
        """The candidate of highest weight (None if there is none)."""
        return self._asc[-1][1] if self._asc else None
