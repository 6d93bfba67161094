"""A client's side of the engine (a mixin of ``MeshNode``). Pure.

A client talks to one assigned peer (rendezvous hashing over the reachable
peers, avoiding those that stopped answering), pings it every probe period
(that peer watches it) and moves to the next one when it is silent, or when
it prunes the client while answering its pings.

A client's pings are also its word on its peer: one that refused them (its
daemon left the mesh: the leaver's tombstone never reaches a client, which
cannot be called and pulls from that very peer) or left them unanswered for
a suspicion window is :attr:`~smegmesh.core.meshnode.MeshNode.suspects` in the
client's view (``status``, ``get-mesh``), until it answers one again or, once
the client moved off it, for as long as the client passes it over. A client's
failure detector watches no peer; it records when the client last heard from
one (every ack of a ping, every pull: ``MeshNode.last_heard``, LAST SEEN in
``get-mesh``; tests/unit/test_last_seen.py).

A client cannot be called, so its peer tells it that it holds it as pruned
in the ack of its ping (``Ack.ok`` False, see :meth:`ClientMixin._ping_ack`);
the client then pulls from that peer at once, gets the signed prune and
refutes it, instead of waiting up to a ``pullInterval`` for its next pull.
"""

from __future__ import annotations

import bisect
import random
from typing import TYPE_CHECKING, Any

from smegmesh.core.buckets import shifted
from smegmesh.core.cert import (
    AuthItem,
)
from smegmesh.core.engine import (
    Call,
    MeshSettings,
    Message,
    Out,
    PeerPingCtx,
)
from smegmesh.core.forwardwatch import ForwardMove
from smegmesh.core.hashing import RankedSet
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.messages import IN_REPLY, Ack, Ping
from smegmesh.core.nodeviews import Views, is_pruned, update_pays
from smegmesh.core.record import (
    NodeRecord,
    Prune,
    Role,
)
from smegmesh.core.state import MeshState
from smegmesh.core.tunnel import AVOID_MS, TunnelMove, TunnelWatch, tunnel_of
from smegmesh.core.wgconfig import InterfaceStatus

Item = NodeRecord | Prune | AuthItem

__all__ = ["ClientMixin"]


class ClientMixin:
    """See the module docstring; ``MeshNode`` provides the state and outputs."""

    mesh_id: str
    liveness: LivenessParams
    _avoid: dict[bytes, int]
    #: peers that refused or left our pings unanswered for a suspicion window:
    #: suspect in our view until then (ms; see the module docstring)
    _unanswered: dict[bytes, int]
    _peer_ping_due: int
    _peer_ping_inflight: bool
    _peer_ping_failures: int
    #: our peer's unbroken run of acks to our pings: (peer, since, last ack), ms
    _acked: tuple[bytes, int, int] | None
    #: (state, the reachable list's version, the list in our rendezvous order)
    _ranking: tuple[MeshState, int, RankedSet] | None
    _tunnel: TunnelWatch
    identity: NodeIdentity
    rng: random.Random

    if TYPE_CHECKING:

        @property
        def key(self) -> bytes: ...  # noqa: D102
        @property
        def mesh(self) -> MeshState: ...  # noqa: D102
        @property
        def record(self) -> NodeRecord | None: ...  # noqa: D102
        def _views(self) -> Views: ...
        def update_self(self, now_ms: int, **changes: Any) -> list[Out]: ...  # noqa: D102
        def _sync_with(self, key: bytes, now_ms: int, slot: str = "heal") -> list[Out]: ...
        @property
        def settings(self) -> MeshSettings: ...  # noqa: D102

    def my_peer(self) -> bytes | None:
        """For a client: the peer it is attached to."""
        rec = self.record
        if rec is None or rec.role != Role.CLIENT:
            return None
        return rec.assigned_peer

    def _ranked_peers(self) -> RankedSet:
        """The reachable peers in our rendezvous order.

        Kept from the state's change log, a peer at a time: not ranked again
        (a hash per peer and a sort, ~3 ms at 3,000 members) on every tick
        and push, nor on every change of membership (bench/engine_cost_bench.py).
        """
        v = self._views()
        r = self._ranking
        if r is not None and r[0] is v.state and r[1] == v.reach_version:
            return r[2]
        keys = None if r is None or r[0] is not v.state else v.state.changed_since(r[1])
        if r is None or keys is None or not update_pays(len(keys), len(v.reachable)):
            order = RankedSet(self.identity.rank_key, v.reachable)
        else:
            order, reach = r[2], v.reachable
            for k in keys:
                i = bisect.bisect_left(reach, k)
                if i < len(reach) and reach[i] == k:
                    order.add(k)
                else:
                    order.discard(k)
        self._ranking = (v.state, v.reach_version, order)
        return order

    def _choose_peer(self, now_ms: int) -> bytes | None:
        """The first peer of our order that we do not avoid, else the one whose avoid ends first.

        So a peer that missed a ping comes before one whose tunnel was dead
        (``tunnel_seen``); ties go to the first in our order.
        """
        order = self._ranked_peers()
        avoid = self._avoid
        first = next((k for k in order if avoid.get(k, 0) <= now_ms), None)
        return first if first is not None else min(order, key=avoid.__getitem__, default=None)

    def _client_targets(self, now_ms: int) -> list[bytes]:
        if self.settings.role != Role.CLIENT:
            return []  # only clients restrict their gossip partners
        mine = self.my_peer()
        order = self._ranked_peers()
        out = [mine] if mine is not None and mine in order else []
        for k in order:
            if k not in out and self._avoid.get(k, 0) <= now_ms:
                out.append(k)
            if len(out) >= 2:
                break
        return out

    def _client_tick(self, now_ms: int) -> list[Out]:
        """Clients ping their peer every probe period (it watches them) and move on failure."""
        if self._unanswered:
            self._unanswered = {k: t for k, t in self._unanswered.items() if t > now_ms}
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
        live = self._ranked_peers()
        if current is not None and current in live and self._avoid.get(current, 0) <= now_ms:
            return []
        best = self._choose_peer(now_ms)
        if best == current:
            return []
        self._peer_ping_failures = 0
        return self.update_self(now_ms, assigned_peer=best)

    def _peer_acked(self, peer: bytes, now_ms: int, reply: Message) -> list[Out]:
        """Our peer answered a ping: extend its run of answers (gaps under client_timeout / 2).

        An ``Ack`` with ``ok`` False says the peer holds our record as pruned:
        we pull from it at once (the signed prune comes with the session, and
        :meth:`_on_changed` refutes it). Only a genuine prune makes us publish
        anything, and at most one such pull a ``HEAL_INTERVAL_MS`` (the
        ``told`` slot), so a peer that says so to every ping costs us at most
        one pull more per 3 s, as many as our own pulls.
        """
        self._peer_ping_inflight = False
        self._peer_ping_failures = 0
        self._unanswered.pop(peer, None)
        a = self._acked
        since = (
            a[1] if a is not None and a[0] == peer and now_ms - a[2] < self._ack_gap_ms else now_ms
        )
        self._acked = (peer, since, now_ms)
        if isinstance(reply, Ack) and not reply.ok:
            return self._sync_with(peer, now_ms, "told")
        return []

    def _ping_ack(self, src: bytes, ping: Ping) -> Ack:
        """A peer's ack of a ping: ``ok`` False to a pruned client's (see the module docstring).

        Said to a ping with ``probe_id`` 0 (a client's) from a caller we hold
        as pruned. O(1) and nothing sent: a client pinging often costs no more than
        before. A prober's ping (ids from 1) is always acked ``ok``: for a
        prober ``ok`` False means no answer. Mixed versions: ``ok`` is in every
        node's ``Ack`` (``messages.Ack``, three fields, no new kind); an older
        peer acks ``ok`` (its client waits for its pull, as before) and an
        older client takes any ack of its ping as an answer, whatever ``ok``.
        """
        pruned = ping.probe_id == 0 and is_pruned(self.mesh, src)
        return Ack(IN_REPLY, ping.probe_id, not pruned)

    def _pruned_by_own_peer(self, now_ms: int) -> None:
        """We are pruned: if our own peer did it while answering our pings, avoid it.

        Our peer watches us by our pings. If it acked every one (no gap of half
        a client timeout) from before we signed the version it pruned until
        now, it cannot have found us silent for a client timeout: it lied, and
        it would keep us (we moved on only from a silent peer) and prune us
        again. The next peer takes us (``_maybe_reassign``, after the
        refutation), and the old one's prunes of us count against its budget.
        A peer that rightly pruned us (our pings were lost) is kept.
        """
        own, prune, a = self.mesh.record(self.key), self.mesh.get_prune(self.key), self._acked
        if own is None or prune is None or a is None or own.role != Role.CLIENT:
            return
        peer, since, last = a
        run = since <= own.timestamp_ms and now_ms - last < self._ack_gap_ms
        if run and prune.by_wg_key == peer == own.assigned_peer:
            self._avoid_peer(peer, now_ms)

    @property
    def _ack_gap_ms(self) -> int:
        """The longest gap between our peer's acks that keeps their run unbroken."""
        return self.liveness.client_timeout_ms // 2

    def tunnel_watched(self, keepalive_s: int) -> bool:
        """Whether :meth:`tunnel_read` judges anything (the adapter reads WireGuard only then).

        A client with a peer and persistent keepalives: without them an idle
        tunnel makes no handshake and proves nothing.
        """
        return keepalive_s > 0 and self.my_peer() is not None

    def tunnel_read(
        self, now_ms: int, status: InterfaceStatus, keepalive_s: int, link_up: bool = True
    ) -> TunnelMove | None:
        """A WireGuard status read of our interface, by the adapter (``core.tunnel``).

        ``link_up`` False: our own interface is down (set down outside smegd,
        read from the host before the health check brings it up again). A down
        link sends nothing, and WireGuard keeps the time of its last handshake:
        the silence that follows is ours, not our peer's. The watch starts
        again, as for a peer not configured yet (``TunnelWatch.absent``).
        """
        peer = self.my_peer()
        if peer is None or not self.tunnel_watched(keepalive_s):
            return None
        judged, handshake_ms = tunnel_of(status, peer)
        if not judged or not link_up:
            self._tunnel.absent()  # not configured yet, no endpoint, or we are down: again
            return None
        return self.tunnel_seen(now_ms, peer, handshake_ms, keepalive_s)

    def tunnel_seen(
        self, now_ms: int, peer: bytes, handshake_ms: int | None, keepalive_s: int
    ) -> TunnelMove | None:
        """WireGuard's latest handshake with ``peer`` (None: never).

        When ``peer`` is still ours and its tunnel is dead (``core.tunnel``),
        pass it over for :data:`~smegmesh.core.tunnel.AVOID_MS` and move to the
        next peer; the move says what to log and what to send.
        """
        if peer != self.my_peer() or not self.tunnel_watched(keepalive_s):
            return None
        silent = self._tunnel.seen(peer, handshake_ms, keepalive_s, now_ms)
        if silent is None:
            return None
        self._avoid_peer(peer, now_ms, AVOID_MS)
        self._tunnel.moved(now_ms)
        outs = self._maybe_reassign(now_ms)
        new = self.my_peer()
        return TunnelMove(peer, new if new != peer else None, silent, outs)

    def _peer_ping_failed(self, peer: bytes, now_ms: int) -> list[Out]:
        """Our ping of ``peer`` was refused or not answered.

        After a suspicion window of such pings it is suspect in our view (see
        the module docstring) and we move to the next peer, if there is one.
        """
        self._peer_ping_inflight = False
        self._peer_ping_failures += 1
        if self._peer_ping_failures * self.liveness.probe_interval_ms < self.liveness.suspicion_ms:
            return []
        self._avoid_peer(peer, now_ms)
        self._unanswered[peer] = self._avoid[peer]
        return self._maybe_reassign(now_ms)

    def _client_clock_stepped(self, d: int) -> None:
        """The wall clock was stepped by ``d`` ms: the client's timers move with it."""
        self._peer_ping_due += d
        self._avoid = shifted(self._avoid, d)
        self._unanswered = shifted(self._unanswered, d)
        self._acked = None  # a run of acks measured across the step: start again
        self._tunnel.clock_stepped(d)

    def _avoid_peer(self, peer: bytes, now_ms: int, for_ms: int | None = None) -> None:
        """Pass over ``peer`` when choosing ours, for ``for_ms`` (three suspicion windows).

        A longer avoid it has already stays.
        """
        until = now_ms + (3 * self.liveness.suspicion_ms if for_ms is None else for_ms)
        self._avoid[peer] = max(self._avoid.get(peer, 0), until)

    def forward_probe(self, now_ms: int, keepalive_s: int) -> bytes | None:
        """A member to probe through our peer now (``core.forwardwatch``), or None.

        The adapter sends a ``Ping`` to its overlay address at its control
        port and one to its control endpoint, and says what answered
        (:meth:`forward_result`). Only while the tunnel handshakes and our peer
        answers our pings: otherwise those watches judge it.
        """
        peer = self.my_peer()
        if peer is None or not self._forwarding_judged(peer, now_ms, keepalive_s):
            return None
        others = [k for k in self._views().reachable if k != peer]
        return self._tunnel.fwd.probe(now_ms, peer, others, self.rng)

    def forward_result(
        self, now_ms: int, target: bytes, overlay: bool, underlay: bool, keepalive_s: int
    ) -> ForwardMove | None:
        """What answered the probe of ``target``: ``overlay`` (through our peer), ``underlay``.

        When the probes blame our peer (``ForwardWatch.result``) while it still
        answers our pings and the tunnel handshakes, pass it over for
        :data:`~smegmesh.core.tunnel.AVOID_MS` and move to the next peer.
        """
        peer = self.my_peer()
        if peer is None:
            return None
        fw = self._tunnel.fwd
        n = sum(1 for k in self._views().reachable if k != peer)
        if not fw.result(now_ms, peer, target, overlay, underlay, n, self.rng):
            return None
        if not self._forwarding_judged(peer, now_ms, keepalive_s):
            return None
        members = tuple(fw.failed)
        self._avoid_peer(peer, now_ms, AVOID_MS)
        fw.moved(now_ms)
        outs = self._maybe_reassign(now_ms)
        new = self.my_peer()
        return ForwardMove(peer, new if new != peer else None, members, outs)

    def _forwarding_judged(self, peer: bytes, now_ms: int, keepalive_s: int) -> bool:
        """Whether the tunnel to ``peer`` handshakes and it answers our pings (then: forwarding)."""
        t, a = self._tunnel, self._acked
        return (
            self.tunnel_watched(keepalive_s)
            and t.peer == peer
            and t.handshake is not None
            and a is not None
            and a[0] == peer
            and now_ms - a[2] < self._ack_gap_ms
        )
