"""A mesh's WireGuard traffic as a counter that never goes down (``smegd_wireguard_bytes_total``).

WireGuard counts bytes per peer entry. A total summed over the entries of one
read goes down when a peer leaves (pruned, left, a client moved to another
peer) or its entry is made again (its counters start at 0 again), and
Prometheus takes any decrease of a counter for a reset: ``rate()`` would count
the whole new total as traffic of that moment. :class:`TrafficTotals` keeps
what such entries had counted, so the total only grows while smegd runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from smegmesh.core.wgconfig import PeerStatus

__all__ = ["TrafficTotals"]


@dataclass
class _MeshTraffic:
    #: each peer entry's (rx, tx) at the previous read
    last: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    #: what entries gone (or made again) since had counted: (rx, tx)
    gone_rx: int = 0
    gone_tx: int = 0

    def read(self, peers: Iterable[PeerStatus]) -> tuple[int, int]:
        now = {p.public_key: (p.rx_bytes, p.tx_bytes) for p in peers}
        for key, (rx, tx) in self.last.items():
            cur = now.get(key)
            if cur is None or cur[0] < rx:  # gone, or counting from 0 again
                self.gone_rx += rx
            if cur is None or cur[1] < tx:
                self.gone_tx += tx
        self.last = now
        return (
            self.gone_rx + sum(rx for rx, _ in now.values()),
            self.gone_tx + sum(tx for _, tx in now.values()),
        )


class TrafficTotals:
    """Bytes received and sent per mesh, over every peer entry seen since smegd started."""

    def __init__(self) -> None:
        self._meshes: dict[str, _MeshTraffic] = {}

    def read(self, mesh_id: str, peers: Iterable[PeerStatus]) -> tuple[int, int]:
        """(rx, tx) of ``mesh_id`` given its peer entries as read now."""
        return self._meshes.setdefault(mesh_id, _MeshTraffic()).read(peers)

    def keep_only(self, mesh_ids: Mapping[str, object]) -> None:
        """Forget the meshes this node is no longer in (one joined again counts from 0)."""
        for gone in self._meshes.keys() - mesh_ids.keys():
            del self._meshes[gone]
