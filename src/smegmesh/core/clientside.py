"""A client's side of the engine (a mixin of ``MeshNode``). Pure.

A client talks to one assigned peer (rendezvous hashing over the reachable
peers, avoiding those that stopped answering), pings it every probe period
(that peer watches it) and moves to the next one when it is silent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from smegmesh.core.cert import (
    AuthItem,
)
from smegmesh.core.engine import (
    Call,
    MeshSettings,
    Out,
    PeerPingCtx,
)
from smegmesh.core.hashing import ranked
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.messages import Ping
from smegmesh.core.record import (
    NodeRecord,
    Prune,
    Role,
)
from smegmesh.core.state import MeshState

Item = NodeRecord | Prune | AuthItem

__all__ = ["ClientMixin"]


class ClientMixin:
    """See the module docstring; ``MeshNode`` provides the state and outputs."""

    mesh_id: str
    liveness: LivenessParams
    _avoid: dict[bytes, int]
    _peer_ping_due: int
    _peer_ping_inflight: bool
    _peer_ping_failures: int
    #: (reachable list, its rendezvous order for us, its members as a set), while
    #: that list object is the views' (it keeps its identity while unchanged)
    _ranking: tuple[list[bytes], list[bytes], frozenset[bytes]] | None

    if TYPE_CHECKING:

        @property
        def key(self) -> bytes: ...  # noqa: D102
        @property
        def mesh(self) -> MeshState: ...  # noqa: D102
        @property
        def record(self) -> NodeRecord | None: ...  # noqa: D102
        def _reachable_peers(self) -> list[bytes]: ...
        def update_self(self, now_ms: int, **changes: Any) -> list[Out]: ...  # noqa: D102
        @property
        def settings(self) -> MeshSettings: ...  # noqa: D102

    def my_peer(self) -> bytes | None:
        """For a client: the peer it is attached to."""
        rec = self.record
        if rec is None or rec.role != Role.CLIENT:
            return None
        return rec.assigned_peer

    def _ranked_peers(self) -> tuple[list[bytes], frozenset[bytes]]:
        """The reachable peers in our rendezvous order, and as a set.

        Computed (a hash per peer and a sort) once per change of the reachable
        peers, not on every tick and push: at 3,000 members that was ~3 ms a
        tick for a client (bench/engine_cost_bench.py).
        """
        peers = self._reachable_peers()
        r = self._ranking
        if r is None or r[0] is not peers:
            r = self._ranking = (peers, ranked(self.key, peers), frozenset(peers))
        return r[1], r[2]

    def _choose_peer(self, now_ms: int) -> bytes | None:
        """The first peer of our order that we do not avoid (else the first)."""
        order, _ = self._ranked_peers()
        avoid = self._avoid
        return next((k for k in order if avoid.get(k, 0) <= now_ms), order[0] if order else None)

    def _client_targets(self, now_ms: int) -> list[bytes]:
        if self.settings.role != Role.CLIENT:
            return []  # only clients restrict their gossip partners
        mine = self.my_peer()
        order, reachable = self._ranked_peers()
        out = [mine] if mine is not None and mine in reachable else []
        for k in order:
            if k not in out and self._avoid.get(k, 0) <= now_ms:
                out.append(k)
            if len(out) >= 2:
                break
        return out

    def _client_tick(self, now_ms: int) -> list[Out]:
        """Clients ping their peer every probe period (it watches them) and move on failure."""
        out = self._maybe_reassign(now_ms)
        peer = self.my_peer()
        if self._peer_ping_inflight or now_ms < self._peer_ping_due:
            return out
        if peer is None:
            self._peer_ping_due = now_ms + self.liveness.probe_interval_ms
            return out
        self._peer_ping_due = now_ms + self.liveness.probe_interval_ms
        self._peer_ping_inflight = True
        out.append(Call(peer, Ping(self.mesh_id, 0), PeerPingCtx(peer)))
        return out

    def _maybe_reassign(self, now_ms: int) -> list[Out]:
        rec = self.mesh.record(self.key)
        if rec is None or rec.left or rec.role != Role.CLIENT:
            return []
        current = rec.assigned_peer
        _, live = self._ranked_peers()
        if current is not None and current in live and self._avoid.get(current, 0) <= now_ms:
            return []
        best = self._choose_peer(now_ms)
        if best == current:
            return []
        self._peer_ping_failures = 0
        return self.update_self(now_ms, assigned_peer=best)
