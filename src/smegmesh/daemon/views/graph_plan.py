"""How a graph is laid out: the meshes to draw, and per mesh the peer groups in a grid."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from smegmesh.core.record import NodeRecord, Role
from smegmesh.daemon.views.common import _assignments

__all__ = ["GraphMesh"]


@dataclass(frozen=True)
class GraphMesh:
    """One mesh to draw: its records, who is suspect, the routes this node uses in it."""

    mesh_id: str
    records: Sequence[NodeRecord]
    suspects: frozenset[bytes] = frozenset()
    routes: Sequence[tuple[str, str, bytes, int]] = field(default_factory=tuple)


#: Fewest peer groups (a peer and its clients) per row of a mesh; clients per row of a group.
_MIN_GROUP_COLS = 4
_CLIENT_COLS = 2
#: Peer-group columns of meshes drawn side by side before the next ones go below.
_MESH_ROW_COLS = 8


def _sort_key(rec: NodeRecord) -> tuple[bool, tuple[tuple[int, str], ...], bytes]:
    """Named nodes first, in natural order (peer2 before peer10), then by key."""
    parts = tuple(
        (int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", rec.alias) if p
    )
    return (not rec.alias, parts, rec.wg_key)


@dataclass(frozen=True)
class _Plan:
    """How one mesh is laid out: peer groups in a grid, loose clients."""

    heads: list[bytes]  # peers heading a group (nodes in several meshes are drawn outside)
    heights: list[int]  # ranks each group takes (peer + rows of clients)
    clients_of: dict[bytes, list[bytes]]  # peer -> its clients
    loose: list[bytes]  # clients without a peer, or served by a node drawn outside
    cols: int  # groups per row


def bridges_of(
    present: Sequence[Mapping[bytes, NodeRecord]], membership: Mapping[bytes, Sequence[int]]
) -> set[bytes]:
    """The nodes that carry traffic across meshes: a peer in two meshes or more.

    A node advertises nothing into a mesh where it is a client, nor anything
    learnt through one (``core.routing``): a client in two meshes is no bridge.
    """
    return {
        k for k, idx in membership.items() if sum(present[i][k].role == Role.PEER for i in idx) >= 2
    }


def _plan(nodes: Mapping[bytes, NodeRecord], shared: set[bytes], self_key: bytes) -> _Plan:
    clients_of: dict[bytes, list[bytes]] = {}
    orphans: list[bytes] = []
    assignment = _assignments(nodes)
    for ck in sorted(assignment, key=lambda k: _sort_key(nodes[k])):
        via = assignment[ck]
        if via is None:
            orphans.append(ck)
        else:
            clients_of.setdefault(via, []).append(ck)
    heads = sorted(
        (k for k, r in nodes.items() if r.role == Role.PEER and k not in shared),
        key=lambda k: (k != self_key, _sort_key(nodes[k])),
    )
    heights = [
        1 + math.ceil(sum(1 for c in clients_of.get(pk, []) if c not in shared) / _CLIENT_COLS)
        for pk in heads
    ]
    loose = [c for c in orphans if c not in shared]
    loose += [c for b in sorted(shared) for c in clients_of.get(b, []) if c not in shared]
    # about as many rows as columns, in groups (a group is wider than high)
    cols = max(_MIN_GROUP_COLS, math.ceil(math.sqrt(len(heads) * 0.8))) if heads else 1
    return _Plan(heads, heights, clients_of, loose, cols)
