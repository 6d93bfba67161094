"""One node's membership of one mesh: the protocol engine. Pure (sans-I/O).

The daemon and the simulator both drive this class through the shared driver
(:mod:`smegmesh.core.driver`); neither contains protocol logic of its own.
Inputs are typed values with the current time, given to :meth:`MeshNode.step`;
outputs are ``Call`` (send this request to that member; report the reply or
the failure back), ``Respond`` (the reply to a request) and ``Changed`` (these
node keys changed: update WireGuard, DNS...); see :mod:`smegmesh.core.engine`.
Local commands outside that set (admin statements, invitations, joins) are
methods returning the same outputs.

What it does:

* owns this node's signed record (creates it, re-signs on change, refutes a
  prune of itself by publishing a newer version);
* gossip (``core.gossip``): triggered push of fresh items, infection rounds,
  background pull through digest anti-entropy (``core.sync``);
* failure detection (``core.liveness``): probes, suspicion, and a signed prune
  when a member is dead; clients ping their assigned peer, which watches them;
* admission of joiners holding a valid invitation (``core.invite``);
* client assignment (``core.desired.assigned_peer``) and re-assignment when
  the client's peer stops answering.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.admission import AdmissionMixin
from smegmesh.core.buckets import shifted
from smegmesh.core.cert import AuthItem
from smegmesh.core.clientside import ClientMixin
from smegmesh.core.engine import (
    Call,
    CallFailed,
    Changed,
    ClockStepped,
    Input,
    MeshSettings,
    NotAllowed,
    Out,
    ProbeCtx,
    ReplyReceived,
    RequestReceived,
    Respond,
    Start,
    SyncCtx,
    TimerFired,
    UpdateSelf,
)
from smegmesh.core.exchange import ExchangeMixin
from smegmesh.core.gossip import GossipParams, GossipScheduler, full_hops, pull_pruned_chance
from smegmesh.core.hashing import RankedSet
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.liveness import Dead, FailureDetector, LivenessParams
from smegmesh.core.liveness import Ping as ProbePing
from smegmesh.core.liveness import PingReq as ProbePingReq
from smegmesh.core.meshtag import MeshTags, record_version
from smegmesh.core.messages import Ping, PingReq
from smegmesh.core.nodeviews import Views, is_pruned_member, share_views, views_of
from smegmesh.core.offer import MAX_HOPS, AskedInFull
from smegmesh.core.prune_budget import PruneBudget
from smegmesh.core.record import NodeRecord, Prune, Role
from smegmesh.core.refuted import RefutedPrunes
from smegmesh.core.state import MeshState
from smegmesh.core.sync import SyncSession
from smegmesh.core.treecast import TreeState
from smegmesh.core.tunnel import TunnelWatch

__all__ = [
    "Call",
    "Changed",
    "MeshNode",
    "MeshSettings",
    "NotAllowed",
    "Out",
    "Respond",
]

Item = NodeRecord | Prune | AuthItem


#: Hops that items a sync session brought are forwarded at: past any change's
#: first hops, far below ``MAX_HOPS`` (late items: ``_push_now``) after any chain.
SYNCED_HOPS = MAX_HOPS // 2


@dataclass
class MeshNode(ExchangeMixin, AdmissionMixin, ClientMixin):
    """One node's membership of one mesh; see the module docstring."""

    identity: NodeIdentity
    mesh_id: str
    settings: MeshSettings
    gossip: GossipParams
    liveness: LivenessParams
    rng: random.Random
    state: MeshState | None = None
    sessions_limit: int = 64
    #: re-sign our unchanged record this often, so it never ages past the
    #: tombstone GC horizon (receivers refuse records older than that)
    refresh_ms: int = 3_600_000
    _sched: GossipScheduler = field(init=False)
    _treecast: TreeState = field(default_factory=TreeState)  # core.treecast
    _fd: FailureDetector = field(init=False)
    _avoid: dict[bytes, int] = field(default_factory=dict)  # client: peers not answering
    _unanswered: dict[bytes, int] = field(default_factory=dict)  # client: suspect in our view
    _peer_ping_due: int = 0
    _peer_ping_inflight: bool = False
    _peer_ping_failures: int = 0
    _acked: tuple[bytes, int, int] | None = None  # client: see ClientMixin._peer_acked
    _tunnel: TunnelWatch = field(default_factory=TunnelWatch)  # client: ClientMixin.tunnel_seen
    _ranking: tuple[MeshState, int, RankedSet] | None = None
    _responders: dict[tuple[bytes, int], SyncSession] = field(default_factory=dict)
    rejected: int = 0
    last_rejects: list[str] = field(default_factory=list)  # why, the last few (for logs)
    heal_sessions: int = 0  # heals (a push of its prune) on hearing from a pruned member
    #: pushed items taken by reference (core.elide): made whole, and not resolved
    by_reference: dict[str, int] = field(default_factory=lambda: {"resolved": 0, "unresolved": 0})
    refuted: RefutedPrunes = field(default_factory=RefutedPrunes)  # by pruner (core.refuted)
    #: keys we wanted in full lately: a repeat of the same offer is wanted whole
    _asked: AskedInFull = field(default_factory=AskedInFull)
    #: this mesh's tag, and the members whose requests may name it (core.meshtag)
    tags: MeshTags = field(init=False)
    _view_cache: Views | None = None
    _pending: NodeRecord | None = None  # a joiner's own record until a member admits it
    #: pruned members we started a heal session with: key -> not again before (ms)
    _heal_due: dict[bytes, int] = field(default_factory=dict)
    #: no heal sync session before this (ms): at most one per HEAL_INTERVAL_MS in all
    _sync_due: dict[str, int] = field(default_factory=dict)  # per slot (_sync_with)

    def __post_init__(self) -> None:
        if self.state is None:
            self.state = MeshState(self.mesh_id)
        self.state.prune_budget = PruneBudget.probing(self.key, self.liveness.probe_interval_ms)
        self._sched = GossipScheduler(self.key, self.gossip, self.rng)
        self._fd = FailureDetector(self.key, self.liveness, self.rng)
        self.tags = MeshTags(self.mesh_id)

    # -- views ------------------------------------------------------------------
    @property
    def key(self) -> bytes:
        return self.identity.wg_public_key

    @property
    def mesh(self) -> MeshState:
        assert self.state is not None
        return self.state

    @property
    def record(self) -> NodeRecord | None:
        return self.mesh.live_record(self.key)

    def views(self) -> Views:
        """O(N) views of the state, kept up to date incrementally (see ``core.nodeviews``).

        The caller may keep them: later updates copy instead of editing them.
        """
        return self._views().export()

    def _views(self) -> Views:
        """The views for use now (their lists may be edited at the next update)."""
        v = views_of(self._view_cache, self.mesh, self.key)
        self._view_cache = v
        return v

    def adopt_views(self, ref: Views) -> bool:
        """Share ``ref``, another node's views of an equal state (O(1) memory).

        See :func:`~smegmesh.core.nodeviews.share_views`; False if it cannot be shared.
        """
        v = share_views(ref, self.mesh, self.key)
        if v is None:
            return False
        self._view_cache = v
        return True

    def _is_pruned_member(self, key: bytes) -> bool:
        return is_pruned_member(self.mesh, self.key, key)

    def live_records(self) -> list[NodeRecord]:
        """The live records in key order (the caller may keep the list: it never changes)."""
        return self._views().export().live

    def live_peers(self) -> dict[bytes, NodeRecord]:
        """The live peers by key (the caller may keep the dict: it never changes)."""
        return self._views().export().peers

    def _reachable_peers(self) -> list[bytes]:
        """Members other nodes can call: live peers with a control endpoint."""
        return self._views().reachable

    def my_clients(self) -> list[bytes]:
        return self._views().my_clients

    def retune(self, gossip: GossipParams, liveness: LivenessParams, now_ms: int) -> None:
        """New gossip and liveness parameters (a configuration reload), effective at once."""
        self.gossip = gossip
        self.liveness = liveness
        self._sched.retune(gossip, now_ms)
        self._fd.retune(liveness, now_ms)
        self._peer_ping_due = min(self._peer_ping_due, now_ms + liveness.probe_interval_ms)

    @property
    def suspects(self) -> frozenset[bytes]:
        """Members we suspect: by our failure detector, or a client's peers (clientside)."""
        return self._fd.suspects.union(self._unanswered) if self._unanswered else self._fd.suspects

    def last_heard(self, key: bytes) -> int | None:
        return self._fd.last_heard(key)

    # -- own record ---------------------------------------------------------------
    def start(self, now_ms: int) -> list[Out]:
        """Publish (or re-publish, after a restart) this node's record."""
        s = self.settings
        current = self.mesh.record(self.key)
        fields: dict[str, Any] = {
            "role": s.role,
            "wg_endpoint": s.wg_endpoint if s.role == Role.PEER else None,
            "control_endpoint": s.control_endpoint if s.role == Role.PEER else None,
            "tls_fp": s.tls_fp,
            "left": False,
        }
        # a peer names none (it was a client before: it would still name its old peer)
        fields["assigned_peer"] = self._choose_peer(now_ms) if s.role == Role.CLIENT else None
        if current is None:
            rec = NodeRecord.create(
                self.identity, self.mesh_id, version=now_ms, now_ms=now_ms, **fields
            )
        else:
            rec = current.evolve(self.identity, now_ms, **fields)
        return self._publish(rec, now_ms)

    def update_self(self, now_ms: int, **changes: Any) -> list[Out]:
        """Change this node's record (alias, description, services, routes...)."""
        current = self.mesh.record(self.key)
        if current is None:
            return self.start(now_ms)
        return self._publish(current.evolve(self.identity, now_ms, **changes), now_ms)

    def leave(self, now_ms: int) -> list[Out]:
        """Publish the leave tombstone and push it to ``branch`` members."""
        return self.update_self(now_ms, left=True)

    def _publish(self, rec: NodeRecord, now_ms: int) -> list[Out]:
        changed = self.mesh.apply(rec, now_ms)
        out: list[Out] = []
        if changed:
            out.append(Changed(frozenset({self.key})))
            # Nobody holds our new version yet: every target gets it in full.
            out.extend(self._push_now({self.key}, (), now_ms, full=self.gossip.branch))
        return out

    # -- receiving items -------------------------------------------------------------
    def _on_changed(
        self,
        changed: set[bytes],
        now_ms: int,
        src: bytes | None,
        hops: int | None = None,
        revived: frozenset[bytes] = frozenset(),
    ) -> list[Out]:
        """Common follow-up of any state change: liveness, refutation, push, reassignment.

        ``hops``: times the changed items were forwarded before they reached us
        (a ``Push``'s; None: by a sync session, or our own change if ``src`` is None);
        ``revived``: the members among them just back alive (see ``_push_now``).
        """
        if not changed:
            return []
        out: list[Out] = [Changed(frozenset(changed))]
        for k in changed:
            if self.mesh.live_record(k) is None:
                self._fd.forget(k)
                self.tags.forget(k)
                self.refuted.took(self.mesh, k, now_ms)  # a prune: when we took it
            else:
                self._tree_signed(k)  # a record it signed: alive (core.treecast)
        # Refute a prune of ourselves: publish a version the prune does not cover.
        if self.key in changed and self.mesh.live_record(self.key) is None:
            own = self.mesh.record(self.key)
            if own is not None and not own.left:
                self._fd.refuted()
                self._pruned_by_own_peer(now_ms)  # a client's: did its peer lie?
                out.extend(self._publish(own.evolve(self.identity, now_ms), now_ms))
                if src is not None and src != self.key:
                    # The member that showed us our prune holds it: it gets the
                    # refutation at once (it would otherwise wait for a pull).
                    out.extend(self._push_calls([src], frozenset({self.key}), now_ms=now_ms))
        # Our own changes (src None: a prune we declared, a statement) are new to
        # every target, and so are items that travelled few hops yet; others
        # go in full to ``full_push`` targets and as offers to the rest.
        if src is None:
            out.extend(self._push_now(changed, (), now_ms, self.gossip.branch))
        else:
            # hops past MAX_HOPS: a push answering our Want (late; _push_now)
            nxt = SYNCED_HOPS if hops is None else hops + 1
            out.extend(self._push_now(changed, (src,), now_ms, hops=nxt, revived=revived))
        if self.settings.role == Role.CLIENT:
            out.extend(self._maybe_reassign(now_ms))
        return out

    def _push_now(
        self,
        keys: Iterable[bytes],
        exclude: Sequence[bytes],
        now_ms: int,
        full: int | None = None,
        hops: int = 0,
        batched: bool = False,
        revived: frozenset[bytes] = frozenset(),
    ) -> list[Out]:
        """Triggered push of ``keys``, forwarded ``hops`` times before (0: our own change).

        ``full`` targets get the items (default: all while ``hops`` is below
        ``full_hops``, else ``full_push``). A received key goes at once a few times
        a window (``throttle``; ``revived``, members back alive, always); past its
        first hops it may be held for a batched push (``hold``; :meth:`tick` sends
        it, ``batched``). Hops past ``MAX_HOPS``: it answers our ``Want``; while
        others spread (``busy``) prunes wait for the rounds (docs/SCALE.md, 6).
        """
        if self.evicted is not None:  # no member takes it (core.evicted)
            return []
        if self.forwards_tree:
            return self._tree_push(keys, exclude, now_ms, full is not None, hops, batched, revived)
        if full is None and not batched:
            keys = self._sched.throttle(keys, now_ms, revived)
            if not keys:
                return []
        peers = self._reachable_peers()
        g = self.gossip
        early = hops <= full_hops(len(peers), g.branch)
        if full is None and hops > MAX_HOPS and g.full_push < g.branch and self._sched.busy(now_ms):
            # late, in a storm: the periodic rounds offer what is not news of a
            # live member (a prune); a member back alive goes on at once
            waiting = {k for k in keys if self.mesh.live_record(k) is None}
            self._sched.note_fresh(waiting)
            keys = [k for k in keys if k not in waiting]
            if not keys:
                return []
        if full is None and not early and not batched and self._sched.hold(keys, hops, now_ms):
            return []
        rnd = self._sched.triggered(
            keys,
            peers,
            is_client=self.settings.role == Role.CLIENT,
            client_peers=self._client_targets(now_ms),
            exclude=exclude,
        )
        if full is None:
            full = g.branch if early else g.full_push
        return self._gossip_calls(rnd.push_to, rnd.keys, full, min(hops, MAX_HOPS), now_ms)

    # -- clock ------------------------------------------------------------------------
    def tick(self, now_ms: int, late_ms: int = 0) -> list[Out]:
        """The clock: refresh, gossip rounds, probes. ``late_ms``: see ``TimerFired``."""
        if (quiet := self._evicted_tick(now_ms)) is not None:  # we know we were evicted
            return quiet
        out: list[Out] = []
        self._fd.stalled(late_ms, now_ms)
        own = self.mesh.record(self.key)
        if own is not None and not own.left and now_ms - own.timestamp_ms >= self.refresh_ms:
            out.extend(self._publish(own.evolve(self.identity, now_ms), now_ms))
        held = self._sched.release(now_ms)
        if held is not None:  # received items held for a batched push (late ones only)
            out.extend(self._push_now(held[0], (), now_ms, hops=held[1], batched=True))
        is_client = self.settings.role == Role.CLIENT
        peers = self._reachable_peers()
        rnd = self._sched.tick(
            now_ms, peers, is_client=is_client, client_peers=self._client_targets(now_ms)
        )
        # Periodic rounds repeat what was pushed already: offers only.
        out.extend(self._gossip_calls(rnd.push_to, rnd.keys, 0, now_ms=now_ms))
        busy = SyncSession.open_count(self._responders) >= self.sessions_limit
        if rnd.pull_from is not None and not busy:
            target = rnd.pull_from
            pruned = self._views().pruned
            chance = pull_pruned_chance(len(pruned), len(peers))
            if pruned and not is_client and self.rng.random() < chance:
                # Heal partitions and false prunes: a pruned member may be alive
                # (on the other side of a partition); a pull shows it our state,
                # including its prune, which it refutes.
                target = self.rng.choice(list(pruned))
            session = SyncSession.initiator(self.mesh, now_ms, rng=self.rng)
            out.append(Call(target, session.start(), SyncCtx(session)))
        if is_client:
            out.extend(self._client_tick(now_ms))
        else:
            v = self._views()  # peers is v.reachable
            acts = self._fd.tick(
                now_ms, peers, watched_clients=v.my_clients, peers_version=v.reach_version
            )
            for a in acts:
                if isinstance(a, ProbePing):
                    out.append(
                        Call(
                            a.target,
                            Ping(self.mesh_id, a.probe_id),
                            ProbeCtx(a.target, a.probe_id),
                        )
                    )
                elif isinstance(a, ProbePingReq):
                    out.append(
                        Call(
                            a.via,
                            PingReq(self.mesh_id, a.target, a.probe_id),
                            ProbeCtx(a.target, a.probe_id),
                        )
                    )
                elif isinstance(a, Dead):
                    out.extend(self._declare_dead(a.target, now_ms))
        return out

    def clock_stepped(self, delta_ms: int) -> list[Out]:
        """The wall clock was stepped by ``delta_ms``: every timer of ours moves with it.

        See :class:`~smegmesh.core.engine.ClockStepped`; what is signed stays
        on the wall clock. Nothing to send.
        """
        d = delta_ms
        self._fd.clock_stepped(d)
        self._sched.clock_stepped(d)
        self.refuted.clock_stepped(d)
        self._asked.clock_stepped(d)
        self.mesh.clock_stepped(d)  # its prune budget and delta bases
        self._client_clock_stepped(d)
        self._heal_due = shifted(self._heal_due, d)
        self._sync_due = shifted(self._sync_due, d)
        self._evicted_clock_stepped(d)  # core.evicted
        self._tree_clock_stepped(d)  # core.treecast
        for session in self._responders.values():  # idle since
            session.now_ms += d
        return []

    def _declare_dead(self, target: bytes, now_ms: int) -> list[Out]:
        rec = self.mesh.record(target)
        if rec is None or target == self.key:
            return []
        prune = Prune.create(
            self.identity,
            self.mesh_id,
            now_ms=now_ms,
            target_record=rec if self.mesh.admission else None,
            target=target,
            target_version=rec.version,
            by_chain=self.chain if self.mesh.admission else (),
        )
        return self._ingest([prune], now_ms, None)

    def next_deadline(self) -> int | None:
        if self.evicted is not None:  # a check in a while, nothing else (core.evicted)
            return self._evicted_deadline()
        if self._sched.next_deadline() is None:
            return 0  # never ticked: tick as soon as possible
        times = [
            t for t in (self._sched.next_deadline(), self._fd.next_deadline()) if t is not None
        ]
        if self.settings.role == Role.CLIENT:
            if self.my_peer() is not None and not self._peer_ping_inflight:
                times.append(self._peer_ping_due)
            elif self.my_peer() is None:
                times.append(self._peer_ping_due + self.liveness.probe_interval_ms)
        return min(times) if times else None

    # -- requests from other members ------------------------------------------------------
    def is_member(self, key: bytes) -> bool:
        """An admitted node that has not left (a pruned one may still refute)."""
        return self.mesh.is_member(key)

    def members_by_id(self, key_id: bytes, limit: int) -> list[bytes]:
        """The members whose keys begin with ``key_id`` (see ``StateStore.members_by_id``)."""
        return self.mesh.members_by_id(key_id, limit)

    # -- the engine boundary ---------------------------------------------------------------
    def named(self, call: Call) -> Call:
        """``call`` as it goes out: the mesh named by tag to a member that takes one."""
        return self.tags.named(call, record_version(self.mesh, call.to))

    def step(self, inp: Input) -> list[Out]:
        """Take one input; return what to do, in order (see :mod:`smegmesh.core.engine`)."""
        if isinstance(inp, TimerFired):
            return self.tick(inp.now_ms, inp.late_ms)
        if isinstance(inp, RequestReceived):
            return self._request(inp)
        if isinstance(inp, ReplyReceived):
            return self.handle_reply(inp.call.to, inp.call.ctx, inp.msg, inp.now_ms)
        if isinstance(inp, CallFailed):
            return self.handle_failure(inp.call.to, inp.call.ctx, inp.now_ms)
        if isinstance(inp, ClockStepped):
            return self.clock_stepped(inp.delta_ms)
        if isinstance(inp, Start):
            return self.start(inp.now_ms)
        if isinstance(inp, UpdateSelf):
            return self.update_self(inp.now_ms, **inp.changes)
        return self.leave(inp.now_ms)
