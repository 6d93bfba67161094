"""Hostile members that forward nothing they receive (``--silent-forwarders``).

A silent member takes what it is pushed and acknowledges it, publishes its
own changes and answers pulls, offers and wants, but never forwards a
received item, eagerly or lazily (it offers nothing either). With tree
dissemination the members chosen are the top of the tree (the root first,
then its children, breadth first): they cut it into the most and largest
pieces, which only the lazy path and the background pull then join
(docs/SCALE.md, section 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from smegmesh.core.meshnode import MeshNode
from smegmesh.core.tree import tree_neighbours

__all__ = ["silence", "tree_top"]


def tree_top(keys: Sequence[bytes], fanout: int, n: int) -> list[bytes]:
    """The first ``n`` members of the tree over ``keys``, breadth first from the root."""
    ks = sorted(keys)
    if not ks or n <= 0:
        return []
    order: list[bytes] = [ks[0]]  # the smallest key is the root
    i = 0
    while len(order) < n and i < len(order):
        _parent, children = tree_neighbours(order[i], ks, order[i], fanout)
        order.extend(children)
        i += 1
    return order[:n]


def silence(node: MeshNode) -> None:
    """Make ``node`` drop every forward of a received item (its own changes still go)."""
    own_push = node._push_now

    def push_now(keys: Iterable[bytes], exclude: Sequence[bytes], now_ms: int, *a: Any, **kw: Any):  # type: ignore[no-untyped-def]
        full = a[0] if a else kw.get("full")
        if full is None:  # a received item (own changes go with ``full``)
            return []
        return own_push(keys, exclude, now_ms, *a, **kw)

    setattr(node, "_push_now", push_now)  # noqa: B010
