"""The bridge-failure scenario of the multi-mesh simulator (:mod:`smegmesh.sim.routesim`).

:func:`run_bridge_failure` builds a topology, runs it steady, kills one
bridge and runs until every node has the routes a fresh offline computation
gives without it; it returns the metrics (convergence times, bytes, events).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any

from smegmesh.core.record import Prune
from smegmesh.sim.driver import T0, NetParams
from smegmesh.sim.routesim import RouteSim
from smegmesh.sim.routetopo import Table, Topology, make_topology, offline_routes

__all__ = ["RouteSimConfig", "run_bridge_failure"]


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


def _pick_victim(topo: Topology, cfg: RouteSimConfig) -> int:
    """The bridge to kill: the only bridge of a link that is not a cut, or one of two."""
    rng = random.Random(f"kill/{cfg.seed}")
    if cfg.kill == "redundant":
        cands = [bs[0] for bs in topo.bridges_of_link.values() if len(bs) >= 2]
    else:
        cut = topo.cut_links()
        cands = [bs[0] for ln, bs in topo.bridges_of_link.items() if len(bs) == 1 and ln not in cut]
    if not cands:
        cands = topo.bridges
    return rng.choice(sorted(cands))


def _run_after_kill(sim: RouteSim, cfg: RouteSimConfig, t_kill: int, progress: bool) -> None:
    """Run until every live node converged and stayed so for ``tail_s`` (or ``max_after_s``)."""
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


def _detect_times(sim: RouteSim, victim: int, t_kill: int) -> list[float]:
    """Failure detection: when the victim was pruned in each of its meshes (prune timestamp)."""
    topo = sim.topo
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
    return detect


@dataclass(frozen=True)
class _Run:
    """What happened in a run, for the report."""

    victim: int
    target: list[Table | None]
    post_rounds: int
    affected: list[int]
    t_steady: int
    t_kill: int
    ev_steady: int
    runs_at_kill: int
    walls: tuple[float, float, float, float, float]


def _traffic(sim: RouteSim, run: _Run, last: float | None, n_live: int) -> dict[str, Any]:
    """Bytes per node and second: steady, while converging, at the peak; by message type."""
    t_kill, t_steady = run.t_kill, run.t_steady
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
    return {
        "steady_bytes_per_node_s": round(steady_rate, 1),
        "conv_bytes_per_node_s": round(conv_rate, 1) if conv_rate is not None else None,
        "peak_bytes_per_node_s": round(peak_rate, 1) if peak_rate is not None else None,
        "steady_by_type": {
            k: round(v / n_live / ((t_kill - t_steady) / 1000), 1)
            for k, v in sorted(steady_by.items())
        },
        "conv_by_type": conv_by,
    }


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
    victim = _pick_victim(topo, cfg)
    _, target, post_rounds = offline_routes(
        topo, sim.base_records, dead=[victim], rank_keys=sim.rank_keys
    )
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
    _run_after_kill(sim, cfg, t_kill, progress)
    w4 = time.perf_counter()
    run = _Run(
        victim,
        target,
        post_rounds,
        affected,
        t_steady,
        t_kill,
        ev_steady,
        runs_at_kill,
        (w0, w1, w2, w3, w4),
    )
    return _report(cfg, sim, run)


def _report(cfg: RouteSimConfig, sim: RouteSim, run: _Run) -> dict[str, Any]:
    """The metrics of a run (``bench/route_bench.py`` prints them)."""
    topo, victim, target, affected, t_kill = (
        sim.topo,
        run.victim,
        run.target,
        run.affected,
        run.t_kill,
    )
    w0, w1, w2, w3, w4 = run.walls
    detect = _detect_times(sim, victim, t_kill)
    live = [i for i in range(topo.nodes) if sim.alive[i]]
    ordinary = cfg.meshes * cfg.per_mesh
    conv = [(c - t_kill) / 1000 for i in live if (c := sim.conv_at[i]) is not None]
    conv_aff = [(c - t_kill) / 1000 for i in affected if (c := sim.conv_at[i]) is not None]
    last = max(conv) if conv else None
    n_live = len(live)
    traffic = _traffic(sim, run, last, n_live)
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
        "offline_rounds_post": run.post_rounds,
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
        **traffic,
        "route_runs_steady": run.runs_at_kill,
        "route_runs_after_kill": sim.route_runs - run.runs_at_kill,
        "table_changes": sum(sim.table_changes),
        "events": sim.events,
        "events_steady": run.ev_steady,
        "virtual_s": (sim.now - T0) / 1000,
        "wall_build_s": round(w1 - w0, 1),
        "wall_offline_post_s": round(w2 - w1, 1),
        "wall_steady_s": round(w3 - w2, 1),
        "wall_after_kill_s": round(w4 - w3, 1),
        "build_timings": {k: round(v, 2) for k, v in sim.timings.items()},
    }
