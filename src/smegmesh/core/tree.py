"""A spanning tree over the key space, for tree-shaped dissemination (an option). Pure.

With ``GossipParams.dissemination == "tree"`` a node forwards what it
receives to its *tree neighbours* (its parent and children, less the member
it came from), not to random members (:mod:`smegmesh.core.treecast`). Every
member computes the tree from its own view of the live members, with no
message of its own: the same view gives every member the same tree.

The tree is cut from the key space, not from positions in the member list,
so that a member added or removed changes only the edges next to it (a
heap over list positions would renumber every member after it: under churn,
views that differ by a few members would give trees that differ everywhere).
Keys are numbers in ``[0, 2**256)``, cut as a grid: the whole space, then
``fanout`` intervals of equal width, each cut again into ``fanout``, and so
on. The smallest key heads the whole space (the root). The head of an
interval has as children the heads of its ``fanout`` sub-intervals, the head
of each being the smallest member key in it not placed higher up (the head
above is not a head again). Every member heads exactly one interval, so the
tree spans the members, and has at most ``fanout`` children; keys are
uniform, so the depth is about ``log(N) / log(fanout)`` plus a few. The grid
does not move with the members: a member more or less changes the edges
along one path of intervals (one member moves up at each level), about
``fanout * depth`` edges, whichever member it is.

``down`` members (calls to them failed lately) are left out: the next member
of their part takes their place, in this node's tree only.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence

__all__ = ["SPACE", "tree_neighbours"]

#: Size of the key space (32-byte keys read as big-endian numbers).
SPACE = 1 << 256
_KEY_LEN = 32


def _first_in(
    peers: Sequence[bytes],
    extras: tuple[bytes, ...],
    skip: Collection[bytes],
    lo: int,
    hi: int,
) -> bytes | None:
    """The smallest member key in ``[lo, hi)``: ``peers`` and ``extras``, less ``skip``."""
    lo_b = lo.to_bytes(_KEY_LEN, "big")
    hi_b = hi.to_bytes(_KEY_LEN, "big") if hi < SPACE else None
    best: bytes | None = None
    i, n = bisect.bisect_left(peers, lo_b), len(peers)
    while i < n:
        p = peers[i]
        if hi_b is not None and p >= hi_b:
            break
        if p not in skip:
            best = p
            break
        i += 1
    for e in extras:
        inside = lo_b <= e and (hi_b is None or e < hi_b) and e not in skip
        if inside and (best is None or e < best):
            best = e
    return best


def _parts(lo: int, hi: int, fanout: int) -> list[tuple[int, int]]:
    """The grid interval ``[lo, hi)`` cut into ``fanout`` of (nearly) equal width, in order."""
    width = hi - lo
    return [(lo + j * width // fanout, lo + (j + 1) * width // fanout) for j in range(fanout)]


def tree_neighbours(
    node: bytes,
    peers: Sequence[bytes],
    me: bytes,
    fanout: int,
    down: Collection[bytes] = (),
) -> tuple[bytes | None, tuple[bytes, ...]]:
    """(parent or None for the root, children) of member ``node`` in the tree.

    The members are the sorted ``peers``, ``me`` (a node's own key is not in
    its list of peers) and ``node``, less ``down`` (``node`` itself is counted
    whatever ``down`` says). O((depth + fanout) log N).
    """
    if fanout < 1:
        raise ValueError("fanout must be >= 1")
    skip = set(down) - {node}
    extras = (me, node)
    target = int.from_bytes(node, "big")
    lo, hi = 0, SPACE
    u = _first_in(peers, extras, skip, lo, hi)
    parent: bytes | None = None
    while u != node:
        assert u is not None  # node itself is a member of every interval holding it
        skip.add(u)  # placed: not a head again below
        lo, hi = next(p for p in _parts(lo, hi, fanout) if p[0] <= target < p[1])
        parent, u = u, _first_in(peers, extras, skip, lo, hi)
    skip.add(node)
    children = []
    for a, b in _parts(lo, hi, fanout):
        c = _first_in(peers, extras, skip, a, b) if a < b else None
        if c is not None:
            children.append(c)
    return parent, tuple(children)
