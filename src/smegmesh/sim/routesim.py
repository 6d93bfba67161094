"""Multi-mesh route convergence: a discrete-event simulation of many meshes and bridges.

Every simulated node has one real :class:`~smegmesh.core.meshnode.MeshNode` per
mesh it is in (same identity). Whenever any of a node's meshes reports
``Changed``, the node runs :func:`smegmesh.core.multimesh.route_meshes` over
all its engines, exactly as the daemon's reconcile loop does, and the outputs
(publishing its new adverts) go back into the engines. Bridges (nodes in two
meshes, ``advertiseRoute`` on) publish adverts; the other nodes only select
gateways. The selected routes of a node are ``RoutingResult.table`` of its
last computation.

Network model as in :mod:`smegmesh.sim.simulator` (``NetParams``): per-node
lognormal distance, per-message jitter, one-way loss, RPC timeout for calls
to crashed nodes; every message is encoded with ``core.wire.encode`` to count
bytes. Determinism: one ``random.Random`` for the network and one per engine,
all derived from the seed; no wall clock in the model.

Steady state is pre-built, not simulated: the routes are converged offline
(:func:`offline_routes`: ``compute_routes`` iterated over the bridges until a
fixed point, which is unique: shortest paths, deterministic tie-break), every
mesh's records (bridges' with their adverts) go into one shared state per
mesh, cloned copy-on-write into each member's engine. Before the run every
node calls ``route_meshes`` once: it must publish nothing (the pre-built
state is the engine's own fixed point) and select exactly the offline routes.

:meth:`RouteSim.kill` crashes a bridge (both its engines) and sets the
target: the tables a fresh offline computation gives without that bridge.
A node has converged at the last time its table became equal to the target
(and stayed so); nodes whose routes do not change converge at the kill.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings, Out
from smegmesh.core.multimesh import MeshRouting, route_meshes
from smegmesh.core.record import NodeRecord, Role, RouteAdv
from smegmesh.core.state import MeshState
from smegmesh.sim.driver import _CUSTOM, T0, Driver, NetParams, TrafficBase
from smegmesh.sim.routetopo import (
    Table,
    Topology,
    _node_seed,
    control_endpoint,
    make_topology,
    offline_routes,
    wg_endpoint,
)
from smegmesh.sim.state import clone_state, tls_fp

__all__ = [
    "RouteSim",
    "Topology",
    "make_topology",
    "offline_routes",
]

_ROUTE = _CUSTOM


# ---------------------------------------------------------------------- simulator


@dataclass(slots=True)
class _Engine:
    node: int
    mesh: str
    eng: MeshNode
    wake_at: int | None = None


@dataclass
class _Traffic(TrafficBase):  # tx, rx: per node
    # (second since T0, message type) -> [count, bytes]
    buckets: dict[tuple[int, str], list[int]] = field(default_factory=dict)


class RouteSim(Driver):
    """Event loop over all engines of all nodes; see the module docstring."""

    def __init__(
        self,
        topo: Topology,
        *,
        seed: int = 1,
        net: NetParams | None = None,
        gossip: GossipParams | None = None,
        liveness: LivenessParams | None = None,
        route_delay_ms: int = 0,
    ) -> None:
        super().__init__(seed=seed, net=net)
        self.topo = topo
        self.seed_ = seed
        self.gossip = gossip or GossipParams()
        self.liveness = liveness or LivenessParams()
        self.route_delay_ms = route_delay_ms
        self.route_runs = 0
        self.traffic: _Traffic = _Traffic([0] * topo.nodes, [0] * topo.nodes)
        self.timings: dict[str, float] = {}

        t0 = time.perf_counter()
        n = topo.nodes
        self.identities = [NodeIdentity.from_seed(_node_seed(seed, i)) for i in range(n)]
        self.keys = [ident.wg_public_key for ident in self.identities]
        #: each node's secret rendezvous key, as its engine ranks gateways
        self.rank_keys = [ident.rank_key for ident in self.identities]
        self.latency_base = [
            self.net.latency_ms * math.exp(self.rng.gauss(0.0, self.net.node_sigma))
            for _ in range(n)
        ]
        t1 = time.perf_counter()

        bases, tables, (t2, t3) = self._build_states()
        self._build_engines(bases)
        self.options = [
            {
                topo.mesh_ids[m]: MeshRouting(advertise_routes=len(ms) >= 2)
                for m in topo.node_meshes[i]
            }
            for i, ms in enumerate(topo.node_meshes)
        ]
        self.alive = [True] * n
        self.epoch = [0] * n
        self._route_pending = [False] * n
        self.tables: list[Table] = [()] * n
        self.table_changes = [0] * n
        self._check_fixed_point(tables)
        self.route_runs = 0
        self.pre_tables = tables
        self.target: list[Table | None] | None = None
        self.conv_at: list[int | None] = [None] * n
        self.killed: list[int] = []
        self.kill_time: int | None = None
        for e in range(len(self.engines)):
            self._wake(e, T0)
        t4 = time.perf_counter()
        self.timings = {
            "identities": t1 - t0,
            "records": t2 - t1,
            "offline_routes": t3 - t2,
            "engines": t4 - t3,
        }

    def _record(self, i: int, m: int, routes: tuple[RouteAdv, ...] = ()) -> NodeRecord:
        return NodeRecord.create(
            self.identities[i],
            self.topo.mesh_ids[m],
            version=T0,
            now_ms=T0,
            role=Role.PEER,
            wg_endpoint=wg_endpoint(i),
            control_endpoint=control_endpoint(i),
            tls_fp=tls_fp(i),
            routes=routes,
        )

    def _build_states(self) -> tuple[list[MeshState], list[Table | None], tuple[float, float]]:
        """Converged records, offline: one shared state per mesh (and the offline tables)."""
        topo, record = self.topo, self._record
        base_recs = {(i, m): record(i, m) for i, ms in enumerate(topo.node_meshes) for m in ms}
        self.base_records = base_recs
        t2 = time.perf_counter()
        adverts, tables, rounds = offline_routes(topo, base_recs, rank_keys=self.rank_keys)
        self.offline_rounds = rounds
        t3 = time.perf_counter()
        # Settled records: bridges publish their converged adverts.
        final = dict(base_recs)
        for (b, m), adv in adverts.items():
            if adv:
                final[(b, m)] = record(b, m, adv)
        bases: list[MeshState] = []
        for m, mid in enumerate(topo.mesh_ids):
            st = MeshState(mid, verifier=lambda jobs: [True] * len(jobs))
            recs = [final[(i, m)] for i in topo.members(m)]
            changed, errors = st.apply_many(recs, T0)
            assert not errors and len(changed) == len(recs)
            st.set_verifier(verify_many)  # receivers verify what arrives
            bases.append(st)
        return bases, tables, (t2, t3)

    def _build_engines(self, bases: list[MeshState]) -> None:
        """One engine per (node, mesh), on a copy-on-write clone of the mesh's state."""
        topo, seed, n = self.topo, self.seed_, self.topo.nodes
        self.engines: list[_Engine] = []
        self.eng_of: dict[tuple[bytes, str], int] = {}
        self.node_engines: list[list[int]] = [[] for _ in range(n)]
        for i, ms in enumerate(topo.node_meshes):
            for m in ms:
                mid = topo.mesh_ids[m]
                eng = MeshNode(
                    identity=self.identities[i],
                    mesh_id=mid,
                    settings=MeshSettings(
                        role=Role.PEER,
                        wg_endpoint=wg_endpoint(i),
                        control_endpoint=control_endpoint(i),
                        tls_fp=tls_fp(i),
                    ),
                    gossip=self.gossip,
                    liveness=self.liveness,
                    rng=random.Random(f"engine/{seed}/{i}/{m}"),
                    state=clone_state(bases[m]),
                )
                e = len(self.engines)
                self.engines.append(_Engine(i, mid, eng))
                self.eng_of[(self.keys[i], mid)] = e
                self.node_engines[i].append(e)

    def _check_fixed_point(self, tables: list[Table | None]) -> None:
        """Before the run every node routes once: nothing to publish, exactly the offline tables."""
        # Every node computes its routes once: nothing to publish, the offline tables.
        for i in range(self.topo.nodes):
            result, outs = self._route(i)
            if outs:
                raise AssertionError(f"node {i}: pre-built state is not a routing fixed point")
            assert result is not None
            self.tables[i] = tuple(result.table)
            if self.tables[i] != tables[i]:
                raise AssertionError(f"node {i}: engine routes differ from offline routes")

    # ------------------------------------------------------------------ endpoints (Driver)

    def _engine(self, e: int) -> MeshNode:
        return self.engines[e].eng

    def _slot(self, e: int) -> _Engine:
        return self.engines[e]

    def _host(self, e: int) -> int:
        return self.engines[e].node

    def _alive(self, e: int) -> bool:
        return self.alive[self.engines[e].node]

    def _epoch(self, e: int) -> int:
        return self.epoch[self.engines[e].node]

    def _key(self, e: int) -> bytes:
        return self.keys[self.engines[e].node]

    def _resolve(self, e: int, key: bytes) -> int:
        return self.eng_of.get((key, self.engines[e].mesh), -1)

    def _mesh_of(self, e: int) -> str:
        return self.engines[e].mesh

    def _latency_base(self, host: int) -> float:
        return self.latency_base[host]

    def _count_type(self, msg: Any, size: int, request: Any = None) -> None:
        bk = ((self.now - T0) // 1000, type(msg).__name__)
        s = self.traffic.buckets.get(bk)
        if s is None:
            s = self.traffic.buckets[bk] = [0, 0]
        s[0] += 1
        s[1] += size

    def _changed(self, e: int, keys: frozenset[bytes]) -> None:
        """Like the daemon: any ``Changed`` wakes the reconcile loop, which recomputes routes."""
        i = self.engines[e].node
        if not self._route_pending[i]:
            self._route_pending[i] = True
            self._push(self.now + self.route_delay_ms, _ROUTE, (i, self.epoch[i]))

    def _event(self, kind: int, payload: Any) -> None:
        assert kind == _ROUTE
        self._route_event(*payload)

    # ------------------------------------------------------------------ routing

    def _route(self, i: int) -> tuple[Any, dict[str, list[Out]]]:
        self.route_runs += 1
        engs = {self.engines[e].mesh: self.engines[e].eng for e in self.node_engines[i]}
        return route_meshes(engs, self.options[i], accept_defaults=False, now_ms=self.now)

    def _route_event(self, i: int, epoch: int) -> None:
        self._route_pending[i] = False
        if not self.alive[i] or self.epoch[i] != epoch:
            return
        result, outs = self._route(i)
        for mid, o in outs.items():
            e = self.eng_of[(self.keys[i], mid)]
            self.command(e, o)
        table = tuple(result.table) if result is not None else ()
        if table != self.tables[i]:
            self.tables[i] = table
            self.table_changes[i] += 1
            if self.target is not None:
                self.conv_at[i] = self.now if table == self.target[i] else None

    # ------------------------------------------------------------------ faults

    def kill(self, node: int, target: list[Table | None]) -> None:
        """Crash ``node`` (all its engines) now; ``target``: the expected tables afterwards."""
        self.alive[node] = False
        self.epoch[node] += 1
        for e in self.node_engines[node]:
            self.engines[e].wake_at = None
        self.killed.append(node)
        self.kill_time = self.now
        self.target = target
        self.conv_at = [
            self.now if self.alive[i] and self.tables[i] == target[i] else None
            for i in range(self.topo.nodes)
        ]

    def unconverged(self) -> int:
        return sum(1 for i in range(self.topo.nodes) if self.alive[i] and self.conv_at[i] is None)

    def bytes_in(self, t_from: int, t_to: int) -> tuple[int, dict[str, int]]:
        """Bytes sent in whole seconds [t_from, t_to) (ms since T0), total and by type."""
        total = 0
        by: dict[str, int] = {}
        lo, hi = t_from // 1000, -(-t_to // 1000)
        for (sec, name), (_, b) in self.traffic.buckets.items():
            if lo <= sec < hi:
                total += b
                by[name] = by.get(name, 0) + b
        return total, by


def __getattr__(name: str) -> Any:
    # The scenario moved to smegmesh.sim.routerun (it imports this module).
    if name in ("RouteSimConfig", "run_bridge_failure"):
        from smegmesh.sim import routerun

        return getattr(routerun, name)
    raise AttributeError(name)
