"""Records of NAT-traversal tests: clients publishing endpoints, and peers (issue 17)."""

from __future__ import annotations

from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import NodeRecord, Role

MESH = "amber-falcon-river-k7q2"
NOW = 1_700_000_000_000
IDS = [NodeIdentity.from_seed(bytes([i + 1]) * 32) for i in range(40)]


def client(i: int, nat: str | None = None, local: tuple[str, ...] = ()) -> NodeRecord:
    """Client ``i``'s record, with its public (``nat``) and local endpoints."""
    return NodeRecord.create(
        IDS[i],
        MESH,
        version=1,
        now_ms=NOW,
        role=Role.CLIENT,
        nat_endpoint=nat,
        local_endpoints=local,
    )


def peer(i: int) -> NodeRecord:
    """Peer ``i``'s record."""
    return NodeRecord.create(
        IDS[i], MESH, version=1, now_ms=NOW, role=Role.PEER, wg_endpoint=f"198.51.100.{i}:51820"
    )
