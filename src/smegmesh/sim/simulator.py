"""Discrete-event simulator driving the real ``MeshNode`` engine.

One :class:`~smegmesh.core.meshnode.MeshNode` per simulated node, a virtual
clock (a ``heapq`` of events, milliseconds) and a simulated network:

* latency: every node gets a lognormal "distance" (median ``latency_ms``);
  a link's median latency is the mean of its two ends' and every message gets
  an extra lognormal jitter factor (``jitter_sigma``);
* loss: every one-way message (request or reply) is dropped with ``loss``;
* partitions: nodes in different groups cannot exchange messages;
* crashes: a crashed node answers nothing; calls to it fail at the caller's
  RPC timeout (``rpc_timeout_ms``). A restart builds a new ``MeshNode`` with
  the same identity and the state it had (as the daemon's persisted state) and
  calls ``start``;
* joins: ``JoinRequest`` to a random live member with a token from
  ``MeshNode.invite``, then the joiner's state is the ``JoinReply`` items,
  and it calls ``start``.

The driver does what the daemon does and nothing else: it delivers ``Call``
requests, feeds replies (``handle_reply``) or failures (``handle_failure``,
after loss, partition or a dead callee, at the RPC timeout), relays
``PingReq`` (``Relay`` reply: ping the target itself, answer ``Ack(ok)``),
and wakes each node at ``next_deadline()`` (never every millisecond).

Every message is encoded with ``smegmesh.core.wire.encode`` to count bytes
(``byte_sample=k`` encodes one message in k per type and uses the running
mean size for the others). Determinism: one ``random.Random(seed)`` for the
network and one per node derived from the seed; no wall clock anywhere.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.invite import Bootstrap
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import Call, Changed, MeshNode, MeshSettings, Out, Relay
from smegmesh.core.messages import Ack, JoinReply, JoinRequest
from smegmesh.core.record import NodeRecord, Role
from smegmesh.core.state import MeshState
from smegmesh.core.wire import encode
from smegmesh.sim.state import (
    Population,
    SharedState,
    clone_state,
    control_endpoint,
    make_population,
)

__all__ = ["NetParams", "SimNode", "Simulator"]

T0 = 1_700_000_000_000  # virtual epoch (ms): realistic timestamps for records

_TICK, _REQ, _REP, _TIMEOUT, _ACTION = range(5)


@dataclass(frozen=True)
class NetParams:
    latency_ms: float = 20.0  # median one-way latency
    node_sigma: float = 0.5  # spread of per-node distances (lognormal sigma)
    jitter_sigma: float = 0.2  # per-message jitter (lognormal sigma)
    loss: float = 0.01  # one-way message loss
    rpc_timeout_ms: int = 1_000  # a call without reply fails after this
    relay_timeout_ms: int = 500  # a relayed ping (PingReq) fails after this


@dataclass(eq=False)
class SimNode:
    index: int
    key: bytes
    node: MeshNode
    alive: bool = True
    epoch: int = 0  # bumped on crash: stale events for the old incarnation are dropped
    wake_at: int | None = None
    latency_base: float = 20.0
    pop_index: int = 0  # index of its identity in the population


@dataclass(slots=True)
class _Pending:
    caller: int
    epoch: int
    to: int
    msg: Any
    ctx: Any
    parent: int | None = None  # relayed ping: the PingReq call it answers
    done: bool = False


@dataclass
class Traffic:
    tx: list[int] = field(default_factory=list)
    rx: list[int] = field(default_factory=list)
    msgs: int = 0
    by_type: dict[str, list[int]] = field(default_factory=dict)  # name -> [count, bytes]


class Simulator:
    """See the module docstring. Build with :meth:`steady` or :meth:`empty`."""

    def __init__(
        self,
        *,
        seed: int = 1,
        net: NetParams | None = None,
        gossip: GossipParams | None = None,
        liveness: LivenessParams | None = None,
        mesh_id: str = "sim",
        byte_sample: int = 1,
    ) -> None:
        self.seed = seed
        self.net = net or NetParams()
        self.gossip = gossip or GossipParams()
        self.liveness = liveness or LivenessParams()
        self.mesh_id = mesh_id
        self.byte_sample = max(1, byte_sample)
        self.rng = random.Random(f"net/{seed}")
        self.now = T0
        self.nodes: list[SimNode] = []
        self.by_key: dict[bytes, int] = {}
        self.group: list[int] | None = None  # partition group per node
        self._heap: list[tuple[int, int, int, Any]] = []
        self._seq = 0
        self._calls: dict[int, _Pending] = {}
        self._next_call = 0
        self.traffic = Traffic()
        self._size_cache: dict[int, tuple[Any, int]] = {}
        self._type_stats: dict[type, list[int]] = {}  # type -> [seen, encoded, bytes]
        self.observers: list[Callable[[int, frozenset[bytes], int], None]] = []
        self.events = 0
        self.population: Population | None = None
        self.views_primed = False

    # ------------------------------------------------------------------ building

    def _node_rng(self, index: int, incarnation: int = 0) -> random.Random:
        return random.Random(f"node/{self.seed}/{index}/{incarnation}")

    def _add(self, key: bytes, node: MeshNode, pop_index: int) -> SimNode:
        i = len(self.nodes)
        lat = self.net.latency_ms * math.exp(self.rng.gauss(0.0, self.net.node_sigma))
        sn = SimNode(i, key, node, latency_base=lat, pop_index=pop_index)
        self.nodes.append(sn)
        self.by_key[key] = i
        self.traffic.tx.append(0)
        self.traffic.rx.append(0)
        return sn

    def _make_node(self, index: int, state: MeshState | None, incarnation: int = 0) -> MeshNode:
        assert self.population is not None
        return MeshNode(
            identity=self.population.identities[index],
            mesh_id=self.mesh_id,
            settings=MeshSettings(
                role=Role.PEER,
                wg_endpoint=self.population.records[index].wg_endpoint,
                control_endpoint=control_endpoint(index),
            ),
            gossip=self.gossip,
            liveness=self.liveness,
            rng=self._node_rng(index, incarnation),
            state=state,
        )

    @classmethod
    def steady(cls, n: int, *, spare: int = 0, share_state: bool = True, **kw: Any) -> Simulator:
        """``n`` members that all hold every record (the settled state after joins).

        ``spare`` extra identities are created for later :meth:`join` calls.
        Each node's ``MeshState`` is a copy-on-write clone of one pre-built
        full state (see :mod:`smegmesh.sim.state`); ``start`` is not called,
        since each node's record is already everywhere. ``share_state=False``
        gives every node an independent full copy instead (the reference for
        the equivalence tests; O(N) memory per node).
        """
        sim = cls(**kw)
        pop = make_population(n + spare, sim.seed, sim.mesh_id, T0)
        sim.population = pop
        base = pop.base
        if spare:
            base = MeshState(sim.mesh_id, verifier=lambda jobs: [True] * len(jobs))
            base.apply_many(pop.records[:n], T0)
        for i in range(n):
            sim._add(
                pop.identities[i].wg_public_key,
                sim._make_node(i, clone_state(base, share=share_state)),
                i,
            )
            sim._wake(i, T0)
        if share_state:
            sim.views_primed = _prime_views([sn.node for sn in sim.nodes])
        return sim

    # ------------------------------------------------------------------ events

    def _push(self, t: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def at(self, t: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t`` (ms, absolute)."""
        self._push(t, _ACTION, fn)

    def _wake(self, i: int, t: int) -> None:
        sn = self.nodes[i]
        if sn.wake_at is None or t < sn.wake_at:
            sn.wake_at = t
            self._push(t, _TICK, (i, sn.epoch))

    def _reschedule(self, i: int) -> None:
        sn = self.nodes[i]
        d = _next_wakeup(sn.node, self.now)
        if d is not None:
            self._wake(i, d)

    def run_until(self, t_end: int) -> None:
        """Process events up to ``t_end``.

        The cyclic garbage collector is paused meanwhile (young generations
        are collected every 20,000 events): a big simulation holds millions
        of long-lived objects (N nodes x O(N) views), and full collections
        triggered by the engine's O(N) temporaries scanned them all (at
        10,000 nodes a view rebuild took 1-7 s instead of ~0.3 s). The
        engine's behaviour does not depend on it.
        """
        was = gc.isenabled()
        gc.disable()
        try:
            self._run_until(t_end)
        finally:
            if was:
                gc.enable()

    def _run_until(self, t_end: int) -> None:
        heap = self._heap
        since_gc = 0
        while heap and heap[0][0] <= t_end:
            since_gc += 1
            if since_gc >= 20_000:
                since_gc = 0
                gc.collect(1)
            t, _, kind, p = heapq.heappop(heap)
            self.now = t
            self.events += 1
            if kind == _TICK:
                i, epoch = p
                sn = self.nodes[i]
                if not sn.alive or sn.epoch != epoch or sn.wake_at != t:
                    continue
                sn.wake_at = None
                self._outs(i, sn.node.tick(t))
                self._reschedule(i)
            elif kind == _REQ:
                self._deliver_request(p)
            elif kind == _REP:
                self._deliver_reply(*p)
            elif kind == _TIMEOUT:
                self._timeout(p)
            else:
                p()
        self.now = max(self.now, t_end)

    def run_for(self, ms: int) -> None:
        self.run_until(self.now + ms)

    # ------------------------------------------------------------------ network

    def can_talk(self, a: int, b: int) -> bool:
        g = self.group
        return g is None or g[a] == g[b]

    def _latency(self, a: int, b: int) -> int:
        base = (self.nodes[a].latency_base + self.nodes[b].latency_base) / 2
        return max(1, int(base * math.exp(self.rng.gauss(0.0, self.net.jitter_sigma))))

    def _size(self, msg: Any) -> int:
        k = id(msg)
        hit = self._size_cache.get(k)
        if hit is not None and hit[0] is msg:
            return hit[1]
        st = self._type_stats.get(type(msg))
        if st is None:
            st = self._type_stats[type(msg)] = [0, 0, 0]
        st[0] += 1
        if self.byte_sample == 1 or st[0] % self.byte_sample == 1 or st[1] == 0:
            size = len(encode(msg))
            st[1] += 1
            st[2] += size
        else:
            size = st[2] // st[1]
        if len(self._size_cache) > 50_000:
            self._size_cache.clear()
        self._size_cache[k] = (msg, size)
        return size

    def _count(self, a: int, b: int, msg: Any, delivered: bool) -> None:
        size = self._size(msg)
        tr = self.traffic
        tr.tx[a] += size
        if delivered:
            tr.rx[b] += size
        tr.msgs += 1
        s = tr.by_type.get(type(msg).__name__)
        if s is None:
            s = tr.by_type[type(msg).__name__] = [0, 0]
        s[0] += 1
        s[1] += size

    def _send(self, a: int, b: int, kind: int, payload: Any, msg: Any) -> None:
        """One-way message a -> b (request or reply), subject to loss and partitions."""
        ok = (
            self.nodes[b].alive
            and self.can_talk(a, b)
            and (self.net.loss <= 0 or self.rng.random() >= self.net.loss)
        )
        self._count(a, b, msg, ok)
        if ok:
            self._push(self.now + self._latency(a, b), kind, payload)

    def _call(self, caller: int, to: int, msg: Any, ctx: Any, parent: int | None = None) -> None:
        self._next_call += 1
        cid = self._next_call
        self._calls[cid] = _Pending(caller, self.nodes[caller].epoch, to, msg, ctx, parent)
        timeout = self.net.relay_timeout_ms if parent is not None else self.net.rpc_timeout_ms
        self._push(self.now + timeout, _TIMEOUT, cid)
        self._send(caller, to, _REQ, cid, msg)

    def _outs(self, i: int, outs: Iterable[Out]) -> None:
        for o in outs:
            if type(o) is Call:
                to = self.by_key.get(o.to)
                if to is None:  # unknown address: the connection fails
                    self._call_unknown(i, o)
                else:
                    self._call(i, to, o.msg, o.ctx)
            elif type(o) is Changed:
                for obs in self.observers:
                    obs(i, o.keys, self.now)

    def _call_unknown(self, i: int, o: Call) -> None:
        self._next_call += 1
        cid = self._next_call
        self._calls[cid] = _Pending(i, self.nodes[i].epoch, -1, o.msg, o.ctx)
        self._push(self.now + self.net.rpc_timeout_ms, _TIMEOUT, cid)

    def _deliver_request(self, cid: int) -> None:
        c = self._calls.get(cid)
        if c is None:
            return
        dst = self.nodes[c.to]
        if not dst.alive:
            return
        src_key = self.nodes[c.caller].key
        reply, outs = dst.node.handle_request(src_key, c.msg, self.now)
        self._outs(c.to, outs)
        if type(reply) is Relay:
            self._call(c.to, self.by_key[reply.target], reply.msg, None, parent=cid)
        else:
            self._send(c.to, c.caller, _REP, (cid, reply), reply)
        self._reschedule(c.to)

    def _deliver_reply(self, cid: int, reply: Any) -> None:
        c = self._calls.pop(cid, None)
        if c is None:
            return  # timed out already
        caller = self.nodes[c.caller]
        if not caller.alive or caller.epoch != c.epoch:
            return
        if c.parent is not None:
            self._relay_done(c, ok=type(reply) is Ack and reply.ok)
            return
        if c.ctx is _JOIN:
            self._join_reply(c, reply)
            return
        to_key = self.nodes[c.to].key
        self._outs(c.caller, caller.node.handle_reply(to_key, c.ctx, reply, self.now))
        self._reschedule(c.caller)

    def _timeout(self, cid: int) -> None:
        c = self._calls.pop(cid, None)
        if c is None:
            return
        caller = self.nodes[c.caller]
        if not caller.alive or caller.epoch != c.epoch:
            return
        if c.parent is not None:
            self._relay_done(c, ok=False)
            return
        if c.ctx is _JOIN:
            self._join_failed(c)
            return
        to_key = self.nodes[c.to].key if c.to >= 0 else b""
        self._outs(c.caller, caller.node.handle_failure(to_key, c.ctx, self.now))
        self._reschedule(c.caller)

    def _relay_done(self, c: _Pending, ok: bool) -> None:
        parent = self._calls.get(c.parent) if c.parent is not None else None
        if parent is None:
            return
        ack = Ack(self.mesh_id, c.msg.probe_id, ok)
        self._send(c.caller, parent.caller, _REP, (c.parent, ack), ack)

    # ------------------------------------------------------------------ faults

    def crash(self, i: int) -> None:
        sn = self.nodes[i]
        sn.alive = False
        sn.epoch += 1
        sn.wake_at = None

    def restart(self, i: int) -> None:
        """Restart with the same identity and the state it had (persisted)."""
        sn = self.nodes[i]
        if sn.alive:
            return
        sn.alive = True
        sn.epoch += 1
        sn.node = self._make_node(sn.pop_index, sn.node.mesh, incarnation=sn.epoch)
        self._outs(i, sn.node.start(self.now))
        self._reschedule(i)
        if sn.wake_at is None:
            self._wake(i, self.now)

    def partition(self, groups: list[int] | None) -> None:
        """``groups[i]``: partition group of node ``i`` (None heals)."""
        self.group = groups

    # ------------------------------------------------------------------ joins

    def join(self, index: int, via: int | None = None) -> int:
        """Spare identity ``index`` of the population joins through member ``via``.

        The member creates an invitation (``MeshNode.invite``, gossiped like
        any change), the joiner sends ``JoinRequest`` with the token's secret
        and its signed record, seeds its state from the ``JoinReply`` and
        calls ``start``. Returns the joiner's simulator index.
        """
        assert self.population is not None
        live = [sn.index for sn in self.nodes if sn.alive]
        if via is None:
            via = self.rng.choice(live)
        m = self.nodes[via]
        boot = Bootstrap(control_endpoint(via), bytes(32), m.key)
        token, outs = m.node.invite(self.now, ttl_ms=3_600_000, uses=1, bootstrap=[boot])
        self._outs(via, outs)
        self._reschedule(via)
        ident = self.population.identities[index]
        rec = NodeRecord.create(
            ident,
            self.mesh_id,
            version=self.now,
            now_ms=self.now,
            role=Role.PEER,
            wg_endpoint=self.population.records[index].wg_endpoint,
            control_endpoint=control_endpoint(index),
        )
        j = self._add(ident.wg_public_key, self._make_node(index, SharedState(self.mesh_id)), index)
        j.alive = True
        req = JoinRequest(self.mesh_id, token.secret, rec)
        self._call(j.index, via, req, _JOIN)
        return j.index

    def _join_reply(self, c: _Pending, reply: Any) -> None:
        sn = self.nodes[c.caller]
        if type(reply) is not JoinReply:
            self._join_failed(c)
            return
        st = SharedState(self.mesh_id)
        st.apply_many(reply.items, self.now)
        sn.node = self._make_node(sn.pop_index, st, incarnation=sn.epoch)
        self._outs(c.caller, sn.node.start(self.now))
        self._outs(c.caller, [Changed(frozenset(st.keys()))])
        self._reschedule(c.caller)

    def _join_failed(self, c: _Pending) -> None:
        # Retry through another member, like the daemon walking its bootstrap list.
        sn = self.nodes[c.caller]
        live = [x.index for x in self.nodes if x.alive and x.index != c.caller and x.node.record]
        via = self.rng.choice(live)
        self._call(c.caller, via, c.msg, _JOIN)
        del sn

    # ------------------------------------------------------------------ views

    def live(self) -> list[SimNode]:
        return [sn for sn in self.nodes if sn.alive]

    def converged(self) -> bool:
        """All live nodes hold the same state."""
        ds = {sn.node.mesh.digest() for sn in self.live()}
        return len(ds) == 1


class _JoinCtx:
    def __repr__(self) -> str:
        return "JOIN"


_JOIN = _JoinCtx()


def _prime_views(nodes: list[MeshNode]) -> bool:
    """Give nodes whose states are clones of one base the same O(N) views.

    The engine caches its views of the state (live records, live peers...)
    per state version; cloned states start equal, so all nodes would compute
    equal views: the live list and the peers dict are computed once (by the
    engine, for the first node) and shared; the reachable list (which
    excludes the node itself) is per node. A node recomputes its own views as
    soon as its state changes. The result is checked against the engine's own
    computation for a second node; on any mismatch (e.g. the engine's private
    ``_Views`` changed) nothing is primed and False is returned.
    """
    from dataclasses import fields, replace

    if len(nodes) < 2:
        return False
    try:
        ref = nodes[0]._views()
        names = [f.name for f in fields(ref)]
        if names != ["state", "version", "live", "peers", "reachable", "my_clients", "pruned"]:
            return False
        if ref.my_clients or ref.pruned:
            return False
        reach_all = [k for k, r in ref.peers.items() if r.control_endpoint is not None]

        def primed(node: MeshNode) -> Any:
            reach = reach_all.copy()
            if node.key in ref.peers and ref.peers[node.key].control_endpoint is not None:
                reach.remove(node.key)
            return replace(ref, state=node.mesh, version=node.mesh.version, reachable=reach)

        check = nodes[1]._views()
        if primed(nodes[1]) != check:
            return False
        for node in nodes[2:]:
            node._view_cache = primed(node)
    except (AttributeError, TypeError, ValueError):
        return False
    return True


def _next_wakeup(node: MeshNode, now: int) -> int | None:
    """``node.next_deadline()``, skipping deadlines already in the past.

    The engine's ``next_deadline`` can return a time that has passed (a probe
    whose indirect pings are out keeps ``started + probe_timeout``), which
    would make the driver spin; in that case the future deadlines are taken
    from the scheduler and the detector directly (reported to the engine author).
    """
    d = node.next_deadline()
    if d is None or d > now:
        return d
    cands: list[int] = []
    g = node._sched.next_deadline()
    if g is not None:
        cands.append(g)
    fd = node._fd
    p = fd.params
    if fd._next_probe_ms is not None:
        cands.append(fd._next_probe_ms)
    pr = fd._probe
    if pr is not None:
        if not pr.indirect_sent:
            cands.append(pr.started_ms + p.probe_timeout_ms)
        cands.append(pr.started_ms + p.probe_interval_ms)
    cands.extend(s + p.suspicion_ms for s in fd._suspect_since.values())
    if node.settings.role == Role.CLIENT:
        cands.append(node._peer_ping_due)
    fut = [t for t in cands if t > now]
    return min(fut) if fut else now + 100


def key_hash(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]
