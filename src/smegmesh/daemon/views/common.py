"""Helpers shared by the views: short keys, who is present, client assignment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from smegmesh.core.aliases import present as _present
from smegmesh.core.identity import key_to_text
from smegmesh.core.record import NodeRecord, Role

__all__ = ["RouteUse", "_assignments", "_first_paths", "_present", "_short"]


class RouteUse(NamedTuple):
    """A routed destination this node uses in ``mesh_id``, sent to ``gateway``.

    A plain ``(destination, mesh_id, gateway, path_length)`` tuple is accepted
    wherever a ``RouteUse`` is (the routing module produces these).
    """

    destination: str
    mesh_id: str
    gateway: bytes
    path_length: int


# --------------------------------------------------------------------------- helpers


def _short(key: bytes) -> str:
    return key_to_text(key)[:8]


def _assignments(nodes: Mapping[bytes, NodeRecord]) -> dict[bytes, bytes | None]:
    """client key -> the peer it is reached through, as :mod:`core.desired` computes it."""
    # imported here: core.desired pulls in the WireGuard config types, which
    # the query/alias helpers do not need
    from smegmesh.core.desired import assigned_peer

    peers = {k: r for k, r in nodes.items() if r.role == Role.PEER}
    return {k: assigned_peer(r, peers) for k, r in nodes.items() if r.role == Role.CLIENT}


def _first_paths(nodes: Mapping[bytes, NodeRecord]) -> dict[tuple[bytes, str], tuple[str, ...]]:
    """(node, destination) -> the path of the node's first advertisement of it."""
    paths: dict[tuple[bytes, str], tuple[str, ...]] = {}
    for k, r in nodes.items():
        for a in r.routes:
            paths.setdefault((k, a.prefix), a.path)
    return paths


# --------------------------------------------------------------------------- alias rules
