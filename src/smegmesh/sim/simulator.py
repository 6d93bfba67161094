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

Each engine is driven by the daemon's driver (:mod:`smegmesh.core.driver`);
the simulator is only its port: it delivers ``Call`` requests and ``Respond``
replies, reports failures (after loss, partition or a dead callee, at the
call's timeout) and wakes each node at its next deadline (never every
millisecond). The engine relays ``PingReq`` itself.

Every message is encoded with ``smegmesh.core.wire.encode`` to count bytes
(``byte_sample=k`` encodes one message in k per type and uses the running
mean size for the others). Determinism: one ``random.Random(seed)`` for the
network and one per node derived from the seed; no wall clock anywhere.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.invite import Bootstrap
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings
from smegmesh.core.messages import JoinReply
from smegmesh.core.nodeviews import share_views
from smegmesh.core.record import Role
from smegmesh.core.state import MeshState
from smegmesh.sim.driver import T0, Driver, NetParams, TrafficBase, _Pending
from smegmesh.sim.kinds import tally
from smegmesh.sim.silent import silence
from smegmesh.sim.state import (
    SIM_MAX_MEMBERS,
    Population,
    SharedState,
    clone_state,
    control_endpoint,
    make_population,
    steady_state,
    tls_fp,
)

__all__ = ["T0", "NetParams", "SimNode", "Simulator", "other_dissemination"]


def other_dissemination(g: GossipParams) -> GossipParams:
    """``g`` with the other dissemination, as smegd's ``dissemination`` key would set it.

    Tree becomes gossip with the default rounds (a member not yet switched);
    gossip becomes ``GossipParams.lazy_tree`` (a member switched first).
    """
    return g.as_dissemination("gossip" if g.dissemination == "tree" else "tree")


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


@dataclass
class Traffic(TrafficBase):
    by_type: dict[str, list[int]] = field(default_factory=dict)  # name -> [count, bytes]
    #: gossip messages by kind (``sim.kinds``), when asked for (``--kinds``)
    kinds: Counter[str] | None = None


class Simulator(Driver):
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
        authority: bool = False,
        verify_sample: float = 0.0,
        mixed_share: float = 0.0,
    ) -> None:
        super().__init__(seed=seed, net=net, byte_sample=byte_sample, verify_sample=verify_sample)
        self.gossip = gossip or GossipParams()
        #: share of the members (by a draw per population index) that run the
        #: other dissemination (``other_dissemination``): a mesh part upgraded
        self.mixed_share = mixed_share
        self.other_gossip = other_dissemination(self.gossip)
        self.liveness = liveness or LivenessParams()
        self.mesh_id = mesh_id
        self.nodes: list[SimNode] = []
        self.by_key: dict[bytes, int] = {}
        self.group: list[int] | None = None  # partition group per node
        self.traffic: Traffic = Traffic()
        self.observers: list[Callable[[int, frozenset[bytes], int], None]] = []
        self.population: Population | None = None
        self.views_primed = False
        #: the mesh has a founding record (node 0 founded it) and admission is
        #: enforced: every record carries its chain (see ``sim.state``)
        self.authority = authority
        #: population indices of members that forward nothing received (sim.silent)
        self.silent: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ building

    def _node_rng(self, index: int, incarnation: int = 0) -> random.Random:
        return random.Random(f"node/{self.seed}/{index}/{incarnation}")

    def mixed(self, index: int) -> bool:
        """Whether the member of population ``index`` runs the other dissemination."""
        if self.mixed_share <= 0.0:
            return False
        return random.Random(f"mixed/{self.seed}/{index}").random() < self.mixed_share

    def gossip_of(self, index: int) -> GossipParams:
        """The gossip parameters of the member of population ``index`` (see ``mixed``)."""
        return self.other_gossip if self.mixed(index) else self.gossip

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
        node = self._new_node(index, state, incarnation)
        if index in self.silent:  # a hostile member: forwards nothing (sim.silent)
            silence(node)
        return node

    def _new_node(self, index: int, state: MeshState | None, incarnation: int) -> MeshNode:
        assert self.population is not None
        return MeshNode(
            identity=self.population.identities[index],
            mesh_id=self.mesh_id,
            settings=MeshSettings(
                role=Role.PEER,
                wg_endpoint=self.population.records[index].wg_endpoint,
                control_endpoint=control_endpoint(index),
                tls_fp=tls_fp(index),
            ),
            gossip=self.gossip_of(index),
            liveness=self.liveness,
            rng=self._node_rng(index, incarnation),
            state=state
            if state is not None
            else MeshState(
                self.mesh_id, max_members=SIM_MAX_MEMBERS, memo=self.population.base.memo
            ),
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
        pop = make_population(
            n + spare,
            sim.seed,
            sim.mesh_id,
            T0,
            authority=sim.authority,
            verify=sim.verify_sample > 0,
        )
        sim.population = pop
        sim.mesh_id = pop.mesh_id
        base = pop.base
        if spare:
            base = steady_state(
                sim.mesh_id, pop.founding, pop.records[:n], T0, verify=sim.verify_sample > 0
            )
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

    # ------------------------------------------------------------------ endpoints (Driver)

    def _engine(self, e: int) -> MeshNode:
        return self.nodes[e].node

    def _slot(self, e: int) -> SimNode:
        return self.nodes[e]

    def _host(self, e: int) -> int:
        return e

    def _alive(self, e: int) -> bool:
        return self.nodes[e].alive

    def _epoch(self, e: int) -> int:
        return self.nodes[e].epoch

    def _key(self, e: int) -> bytes:
        return self.nodes[e].key

    def _resolve(self, e: int, key: bytes) -> int:
        return self.by_key.get(key, -1)

    def _mesh_of(self, e: int) -> str:
        return self.mesh_id

    def _latency_base(self, host: int) -> float:
        return self.nodes[host].latency_base

    def _can_talk(self, a: int, b: int) -> bool:
        return self.can_talk(a, b)

    def _count_type(self, msg: Any, size: int, request: Any = None) -> None:
        by_type = self.traffic.by_type
        s = by_type.get(type(msg).__name__)
        if s is None:
            s = by_type[type(msg).__name__] = [0, 0]
        s[0] += 1
        s[1] += size
        if self.traffic.kinds is not None:
            tally(self.traffic.kinds, msg, request)

    def _changed(self, e: int, keys: frozenset[bytes]) -> None:
        for obs in self.observers:
            obs(e, keys, self.now)

    def _reply(self, c: _Pending, reply: Any) -> None:
        if c.call is _JOIN:
            self._join_reply(c, reply)
        else:
            super()._reply(c, reply)

    def _failed(self, c: _Pending) -> None:
        if c.call is _JOIN:
            self._join_failed(c)
        else:
            super()._failed(c)

    # ------------------------------------------------------------------ network

    def can_talk(self, a: int, b: int) -> bool:
        g = self.group
        return g is None or g[a] == g[b]

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
        self.command(i, sn.node.start(self.now))
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
        and its signed record (``MeshNode.join_request``) and takes the
        ``JoinReply`` with ``MeshNode.absorb``. Returns the joiner's simulator index.
        """
        assert self.population is not None
        live = [sn.index for sn in self.nodes if sn.alive]
        if via is None:
            via = self.rng.choice(live)
        m = self.nodes[via]
        boot = Bootstrap(control_endpoint(via), bytes(32), m.key)
        # A secret derived from the seed (not ``secrets``): the token's hash is in
        # the admission cert, a state item, so it must be reproducible.
        secret = hashlib.sha256(f"sim-token/{self.seed}/{index}".encode()).digest()[:16]
        token, outs = m.node.invite(
            self.now, ttl_ms=3_600_000, uses=1, bootstrap=[boot], secret=secret
        )
        self.command(via, outs)
        ident = self.population.identities[index]
        j = self._add(
            ident.wg_public_key,
            self._make_node(
                index,
                SharedState(self.mesh_id, admission=self.authority, max_members=SIM_MAX_MEMBERS),
            ),
            index,
        )
        j.alive = True
        # The engine builds the request (its own signed record) and, below,
        # takes the reply (``absorb``), exactly as the daemon does.
        req = j.node.join_request(token.secret, self.now)
        self._call(j.index, via, req, _JOIN)
        return j.index

    def _join_reply(self, c: _Pending, reply: Any) -> None:
        if type(reply) is not JoinReply:
            self._join_failed(c)
            return
        node = self.nodes[c.caller].node
        self.command(c.caller, node.absorb(reply.items, self.now, reply.chain))

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
    equal views: the engine computes them once (for the first node) and the
    others share them (``MeshNode.adopt_views``). A node recomputes its own
    views as soon as its state changes. The shared result is checked against
    the engine's own computation for a second node; on any mismatch nothing
    is primed and False is returned.
    """
    if len(nodes) < 2:
        return False
    ref = nodes[0].views()
    shared = share_views(ref, nodes[1].mesh, nodes[1].key)
    if shared is None or shared != nodes[1].views():
        return False
    return all(node.adopt_views(ref) for node in nodes[2:])
