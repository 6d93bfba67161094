"""Memoized views for large simulations (``--memo``; behaviour-identical to ``MeshNode``).

At 1,000+ nodes the engine spends nearly all its time recomputing O(N)
views on every ``tick`` (see docs/SCALE.md, "Hot spots"): the sorted list of
live records, the peer dict, the reachable-peer list, the client list, the
rendezvous ranking for client push targets (computed even on peers, which do
not use it) and the gossip clusters (a sort of all members). These
subclasses cache exactly those views and recompute them when the state
changes (``SharedState.version``), so they return the same values in the same
order and consume the random generator identically: a run with memoization
produces the same events as one without (``tests/test_sim.py`` checks this).
They are a stop-gap for the simulator and a suggestion for the engine; no
protocol decision is made here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from smegmesh.core.gossip import GossipScheduler
from smegmesh.core.meshnode import MeshNode
from smegmesh.core.record import NodeRecord, Role
from smegmesh.sim.state import SharedState

__all__ = ["MemoMeshNode"]


class MemoGossipScheduler(GossipScheduler):
    """``clusters`` cached per member list object (the memoized list is reused)."""

    _memo: tuple[Any, list[list[bytes]]] | None = None

    def clusters(self, members: Sequence[bytes]) -> list[list[bytes]]:
        m = self._memo
        if m is not None and m[0] is members:
            return m[1]
        out = GossipScheduler.clusters(self, members)
        self._memo = (members, out)
        return out


class MemoMeshNode(MeshNode):
    _memo_ver: int = -1
    _memo_state: Any = None
    _m_live: list[NodeRecord]
    _m_peers: dict[bytes, NodeRecord]
    _m_reach: list[bytes]
    _m_clients: list[bytes]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._sched = MemoGossipScheduler(self.key, self.gossip, self.rng)

    def _fresh(self) -> None:
        st = self.mesh
        ver = st.version if isinstance(st, SharedState) else -2
        if ver == -2 or st is not self._memo_state or ver != self._memo_ver:
            self._memo_state, self._memo_ver = st, ver
            self._m_live = MeshNode.live_records(self)
            self._m_peers = {r.wg_key: r for r in self._m_live if r.role == Role.PEER}
            self._m_reach = [
                k
                for k, r in self._m_peers.items()
                if k != self.key and r.control_endpoint is not None
            ]
            self._m_clients = MeshNode.my_clients(self)

    def live_records(self) -> list[NodeRecord]:
        if isinstance(self.mesh, SharedState):
            self._fresh()
            return self._m_live
        return MeshNode.live_records(self)

    def live_peers(self) -> dict[bytes, NodeRecord]:
        if isinstance(self.mesh, SharedState):
            self._fresh()
            return self._m_peers
        return MeshNode.live_peers(self)

    def _reachable_peers(self) -> list[bytes]:
        if isinstance(self.mesh, SharedState):
            self._fresh()
            return self._m_reach
        return MeshNode._reachable_peers(self)

    def my_clients(self) -> list[bytes]:
        if isinstance(self.mesh, SharedState):
            self._fresh()
            return self._m_clients
        return MeshNode.my_clients(self)

    def _client_targets(self) -> list[bytes]:
        # Only clients use these targets (GossipScheduler ignores them on peers).
        if self.settings.role != Role.CLIENT:
            return []
        return MeshNode._client_targets(self)
