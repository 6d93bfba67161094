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

import hashlib
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.identity import NodeIdentity, verify_many
from smegmesh.core.liveness import LivenessParams
from smegmesh.core.meshnode import MeshNode, MeshSettings, Out
from smegmesh.core.multimesh import MeshRouting, route_meshes
from smegmesh.core.record import NodeRecord, Prune, Role, RouteAdv
from smegmesh.core.routing import RouteEntry, compute_routes
from smegmesh.core.state import MeshState
from smegmesh.sim.driver import _CUSTOM, T0, Driver, NetParams, TrafficBase
from smegmesh.sim.state import clone_state

__all__ = [
    "RouteSim",
    "RouteSimConfig",
    "Topology",
    "make_topology",
    "offline_routes",
    "run_bridge_failure",
]

Table = tuple[RouteEntry, ...]

_ROUTE = _CUSTOM


# ---------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    """Meshes, their members and the bridges between them.

    Nodes ``0 .. meshes*per_mesh-1`` are ordinary members (``per_mesh`` per
    mesh, in mesh order); the others are bridges, each in exactly two meshes.
    """

    mesh_ids: tuple[str, ...]
    node_meshes: tuple[tuple[int, ...], ...]  # node -> indices of its meshes
    links: tuple[tuple[int, int], ...]  # mesh graph edges (a < b)
    bridges_of_link: dict[tuple[int, int], tuple[int, ...]]

    @property
    def nodes(self) -> int:
        return len(self.node_meshes)

    @property
    def bridges(self) -> list[int]:
        return [i for i, ms in enumerate(self.node_meshes) if len(ms) >= 2]

    def members(self, mesh: int) -> list[int]:
        return [i for i, ms in enumerate(self.node_meshes) if mesh in ms]

    def cut_links(self) -> set[tuple[int, int]]:
        """Links whose removal disconnects the mesh graph."""
        out = set()
        for e in self.links:
            if not _connected(len(self.mesh_ids), [x for x in self.links if x != e]):
                out.add(e)
        return out


def _connected(n: int, edges: Sequence[tuple[int, int]]) -> bool:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen = {0}
    todo = [0]
    while todo:
        x = todo.pop()
        for y in adj[x]:
            if y not in seen:
                seen.add(y)
                todo.append(y)
    return len(seen) == n


def make_topology(
    meshes: int,
    per_mesh: int,
    *,
    seed: int,
    extra_links: float = 0.25,
    redundant: float = 0.2,
) -> Topology:
    """A random connected mesh graph: a random recursive tree plus
    ``extra_links * meshes`` extra links (average degree ~2.5); each link gets
    one bridge, or two with probability ``redundant``."""
    rng = random.Random(f"topology/{seed}")
    links: set[tuple[int, int]] = set()
    for i in range(1, meshes):
        j = rng.randrange(i)
        links.add((j, i))
    want = len(links) + round(extra_links * meshes)
    tries = 0
    while len(links) < want and tries < 100 * meshes and meshes > 2:
        tries += 1
        a, b = sorted(rng.sample(range(meshes), 2))
        links.add((a, b))
    ordered = tuple(sorted(links))
    node_meshes: list[tuple[int, ...]] = [(m,) for m in range(meshes) for _ in range(per_mesh)]
    by_link: dict[tuple[int, int], tuple[int, ...]] = {}
    for a, b in ordered:
        k = 2 if rng.random() < redundant else 1
        ids = []
        for _ in range(k):
            ids.append(len(node_meshes))
            node_meshes.append((a, b))
        by_link[(a, b)] = tuple(ids)
    mesh_ids = tuple(f"rmesh-{seed}-{m:03d}" for m in range(meshes))
    return Topology(mesh_ids, tuple(node_meshes), ordered, by_link)


# ---------------------------------------------------------------------- offline routing


def _node_seed(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"smegmesh-routesim/{seed}/{i}".encode()).digest()


def control_endpoint(i: int) -> str:
    return f"[fd00:5f::{i // 65536:x}:{i % 65536:x}]:7443"


def wg_endpoint(i: int) -> str:
    return f"[2001:db8:5f::{i // 65536:x}:{i % 65536:x}]:51820"


def offline_routes(
    topo: Topology,
    records: dict[tuple[int, int], NodeRecord],
    dead: Iterable[int] = (),
    *,
    max_rounds: int | None = None,
) -> tuple[dict[tuple[int, int], tuple[RouteAdv, ...]], list[Table | None], int]:
    """Converge routes offline: ``compute_routes`` over the bridges until nothing changes.

    ``records[(node, mesh)]`` are the base records (their ``routes`` are
    ignored). Returns the bridges' adverts per (node, mesh), every live
    node's table (None for dead nodes) and the number of rounds.
    """
    gone = set(dead)
    cur = {k: replace(r, routes=()) for k, r in records.items() if k[0] not in gone}
    members: list[list[int]] = [[] for _ in topo.mesh_ids]
    for i, ms in enumerate(topo.node_meshes):
        if i not in gone:
            for m in ms:
                members[m].append(i)
    ids = topo.mesh_ids

    def compute(i: int, adv: bool) -> Any:
        recs = {ids[m]: [cur[(j, m)] for j in members[m]] for m in topo.node_meshes[i]}
        return compute_routes(
            records[(i, topo.node_meshes[i][0])].wg_key,
            recs,
            advertise_routes=adv,
            advertise_defaults=False,
            accept_defaults=False,
        )

    bridges = [b for b in topo.bridges if b not in gone]
    limit = max_rounds if max_rounds is not None else 4 * len(ids) + 10
    rounds = 0
    changed = True
    while changed:
        rounds += 1
        if rounds > limit:
            raise RuntimeError("offline routing did not converge")
        changed = False
        for b in bridges:  # Gauss-Seidel: the fixed point is unique, order only changes speed
            res = compute(b, True)
            for m in topo.node_meshes[b]:
                new = tuple(res.adverts.get(ids[m], ()))
                if cur[(b, m)].routes != new:
                    cur[(b, m)] = replace(cur[(b, m)], routes=new)
                    changed = True
    adverts = {(b, m): cur[(b, m)].routes for b in bridges for m in topo.node_meshes[b]}
    tables: list[Table | None] = [
        None if i in gone else tuple(compute(i, len(topo.node_meshes[i]) >= 2).table)
        for i in range(topo.nodes)
    ]
    return adverts, tables, rounds


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
        self.latency_base = [
            self.net.latency_ms * math.exp(self.rng.gauss(0.0, self.net.node_sigma))
            for _ in range(n)
        ]
        t1 = time.perf_counter()

        def record(i: int, m: int, routes: tuple[RouteAdv, ...] = ()) -> NodeRecord:
            return NodeRecord.create(
                self.identities[i],
                topo.mesh_ids[m],
                version=T0,
                now_ms=T0,
                role=Role.PEER,
                wg_endpoint=wg_endpoint(i),
                control_endpoint=control_endpoint(i),
                routes=routes,
            )

        base_recs = {(i, m): record(i, m) for i, ms in enumerate(topo.node_meshes) for m in ms}
        self.base_records = base_recs
        t2 = time.perf_counter()
        adverts, tables, rounds = offline_routes(topo, base_recs)
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
        # Every node computes its routes once: nothing to publish, the offline tables.
        for i in range(n):
            result, outs = self._route(i)
            if outs:
                raise AssertionError(f"node {i}: pre-built state is not a routing fixed point")
            assert result is not None
            self.tables[i] = tuple(result.table)
            if self.tables[i] != tables[i]:
                raise AssertionError(f"node {i}: engine routes differ from offline routes")
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

    def _count_type(self, msg: Any, size: int) -> None:
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


# ---------------------------------------------------------------------- scenario


@dataclass(frozen=True)
class RouteSimConfig:
    meshes: int = 10
    per_mesh: int = 28  # ordinary members per mesh (bridges come on top)
    seed: int = 1
    extra_links: float = 0.25
    redundant: float = 0.2
    kill: str = "sole"  # "sole": the only bridge of a non-cut link; "redundant": one of two
    warmup_s: float = 5.0
    steady_s: float = 10.0
    max_after_s: float = 120.0
    tail_s: float = 5.0  # keep running after everyone converged (must stay converged)
    loss: float = 0.01


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run_bridge_failure(cfg: RouteSimConfig, *, progress: bool = False) -> dict[str, Any]:
    """Build, run steady, kill one bridge, run until every node has the offline routes."""
    w0 = time.perf_counter()
    topo = make_topology(
        cfg.meshes,
        cfg.per_mesh,
        seed=cfg.seed,
        extra_links=cfg.extra_links,
        redundant=cfg.redundant,
    )
    sim = RouteSim(topo, seed=cfg.seed, net=NetParams(loss=cfg.loss))
    w1 = time.perf_counter()

    rng = random.Random(f"kill/{cfg.seed}")
    if cfg.kill == "redundant":
        cands = [bs[0] for bs in topo.bridges_of_link.values() if len(bs) >= 2]
    else:
        cut = topo.cut_links()
        cands = [bs[0] for ln, bs in topo.bridges_of_link.items() if len(bs) == 1 and ln not in cut]
    if not cands:
        cands = topo.bridges
    victim = rng.choice(sorted(cands))
    _, target, post_rounds = offline_routes(topo, sim.base_records, dead=[victim])
    affected = [i for i in range(topo.nodes) if i != victim and target[i] != sim.pre_tables[i]]
    w2 = time.perf_counter()

    sim.run_for(int(cfg.warmup_s * 1000))
    t_steady = sim.now
    sim.run_for(int(cfg.steady_s * 1000))
    t_kill = sim.now
    ev_steady = sim.events
    runs_at_kill = sim.route_runs
    sim.kill(victim, target)
    w3 = time.perf_counter()
    deadline = t_kill + int(cfg.max_after_s * 1000)
    done_at: int | None = None
    while sim.now < deadline:
        sim.run_for(1000)
        if progress:
            print(
                f"  t+{(sim.now - t_kill) / 1000:.0f}s unconverged={sim.unconverged()} "
                f"events={sim.events} wall={time.perf_counter() - w3:.0f}s",
                flush=True,
            )
        if sim.unconverged() == 0:
            if done_at is None:
                done_at = sim.now
            if sim.now - done_at >= cfg.tail_s * 1000:
                break
        else:
            done_at = None
    w4 = time.perf_counter()

    # failure detection: when the victim was pruned in each of its meshes (prune timestamp)
    detect: list[float] = []
    for m in topo.node_meshes[victim]:
        mid = topo.mesh_ids[m]
        seen = [
            it.timestamp_ms
            for e in topo.members(m)
            if sim.alive[e]
            for it in sim.engines[sim.eng_of[(sim.keys[e], mid)]].eng.mesh.items_for(
                [sim.keys[victim]]
            )
            if isinstance(it, Prune)
        ]
        if seen:
            detect.append((min(seen) - t_kill) / 1000)
    live = [i for i in range(topo.nodes) if sim.alive[i]]
    ordinary = cfg.meshes * cfg.per_mesh
    conv = [(c - t_kill) / 1000 for i in live if (c := sim.conv_at[i]) is not None]
    conv_aff = [(c - t_kill) / 1000 for i in affected if (c := sim.conv_at[i]) is not None]
    last = max(conv) if conv else None
    n_live = len(live)
    steady_b, steady_by = sim.bytes_in(t_steady - T0, t_kill - T0)
    steady_rate = steady_b / n_live / ((t_kill - t_steady) / 1000)
    conv_rate = None
    peak_rate = None
    conv_by: dict[str, float] = {}
    if last is not None and sim.unconverged() == 0:
        t_end = t_kill - T0 + max(1000, int(math.ceil(last) * 1000))
        cb, cby = sim.bytes_in(t_kill - T0, t_end)
        secs = (t_end - (t_kill - T0)) / 1000
        conv_rate = cb / n_live / secs
        conv_by = {k: round(v / n_live / secs, 1) for k, v in sorted(cby.items())}
        lo = (t_kill - T0) // 1000
        per_sec = [sim.bytes_in(s * 1000, s * 1000 + 1000)[0] for s in range(lo, t_end // 1000)]
        peak_rate = max(per_sec) / n_live if per_sec else None
    vm = topo.node_meshes[victim]
    vmb = topo.bridges_of_link[(min(vm), max(vm))]
    return {
        "meshes": cfg.meshes,
        "nodes": topo.nodes,
        "engines": len(sim.engines),
        "bridges": len(topo.bridges),
        "links": len(topo.links),
        "redundant_links": sum(1 for b in topo.bridges_of_link.values() if len(b) > 1),
        "seed": cfg.seed,
        "kill": cfg.kill,
        "victim": victim,
        "victim_meshes": list(vm),
        "victim_link_bridges": len(vmb),
        "offline_rounds_pre": sim.offline_rounds,
        "offline_rounds_post": post_rounds,
        "routes_per_node_pre": round(sum(len(t or ()) for t in sim.pre_tables) / topo.nodes, 2),
        "routes_per_node_post": round(sum(len(t or ()) for t in target) / n_live, 2),
        # ordinary nodes: other meshes they have no route to (MAX_ROUTES truncation)
        "missing_routes_pre": round(
            sum(cfg.meshes - 1 - len(sim.pre_tables[i] or ()) for i in range(ordinary)) / ordinary,
            2,
        ),
        "affected_nodes": len(affected),
        "unconverged": sim.unconverged(),
        "detect_s": detect,
        "propagation_s": round(last - max(detect), 3) if last is not None and detect else None,
        "conv_p50_s": _pct(conv, 0.5),
        "conv_p99_s": _pct(conv, 0.99),
        "conv_max_s": last,
        "conv_affected_p50_s": _pct(conv_aff, 0.5),
        "conv_affected_p99_s": _pct(conv_aff, 0.99),
        "steady_bytes_per_node_s": round(steady_rate, 1),
        "conv_bytes_per_node_s": round(conv_rate, 1) if conv_rate is not None else None,
        "peak_bytes_per_node_s": round(peak_rate, 1) if peak_rate is not None else None,
        "steady_by_type": {
            k: round(v / n_live / ((t_kill - t_steady) / 1000), 1)
            for k, v in sorted(steady_by.items())
        },
        "conv_by_type": conv_by,
        "route_runs_steady": runs_at_kill,
        "route_runs_after_kill": sim.route_runs - runs_at_kill,
        "table_changes": sum(sim.table_changes),
        "events": sim.events,
        "events_steady": ev_steady,
        "virtual_s": (sim.now - T0) / 1000,
        "wall_build_s": round(w1 - w0, 1),
        "wall_offline_post_s": round(w2 - w1, 1),
        "wall_steady_s": round(w3 - w2, 1),
        "wall_after_kill_s": round(w4 - w3, 1),
        "build_timings": {k: round(v, 2) for k, v in sim.timings.items()},
    }
