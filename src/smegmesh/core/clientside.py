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

    def _choose_peer(self, now_ms: int) -> bytes | None:
        peers = [k for k in self._reachable_peers() if self._avoid.get(k, 0) <= now_ms]
        if not peers:
            peers = self._reachable_peers()
        order = ranked(self.key, peers)
        return order[0] if order else None

    def _client_targets(self, now_ms: int) -> list[bytes]:
        if self.settings.role != Role.CLIENT:
            return []  # only clients restrict their gossip partners
        mine = self.my_peer()
        peers = self._reachable_peers()
        out = [mine] if mine is not None and mine in peers else []
        for k in ranked(self.key, peers):
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
        live = self._reachable_peers()
        if current is not None and current in live and self._avoid.get(current, 0) <= now_ms:
            return []
        best = self._choose_peer(now_ms)
        if best == current:
            return []
        self._peer_ping_failures = 0
        return self.update_self(now_ms, assigned_peer=best)
