"""Multi-mesh simulator (smegmesh.sim.routesim): route convergence after a bridge dies."""

from __future__ import annotations

from typing import Any

import pytest

from smegmesh.sim.routerun import RouteSimConfig, run_bridge_failure
from smegmesh.sim.routesim import RouteSim
from smegmesh.sim.routetopo import make_topology, offline_routes


def _strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith(("wall", "build"))}


@pytest.mark.parametrize("kill", ["sole", "redundant"])
def test_bridge_death_converges_to_offline_routes(kill: str) -> None:
    cfg = RouteSimConfig(meshes=8, per_mesh=6, seed=3, kill=kill, steady_s=3.0, tail_s=3.0)
    r = run_bridge_failure(cfg)
    assert r["unconverged"] == 0
    assert r["affected_nodes"] > 0
    # failure detection (probe + suspicion ~3 s) plus propagation over a few meshes
    assert r["conv_max_s"] is not None and 1.0 < r["conv_max_s"] < 20.0
    assert r["conv_bytes_per_node_s"] > r["steady_bytes_per_node_s"]
    assert r["route_runs_steady"] == 0  # steady state: no Changed, no recomputation


def test_same_seed_same_run() -> None:
    cfg = RouteSimConfig(meshes=6, per_mesh=5, seed=5, steady_s=2.0, tail_s=2.0)
    a, b = _strip(run_bridge_failure(cfg)), _strip(run_bridge_failure(cfg))
    assert a == b
    c = _strip(run_bridge_failure(RouteSimConfig(meshes=6, per_mesh=5, seed=6, steady_s=2.0)))
    assert c != a


def test_final_tables_equal_fresh_offline_computation() -> None:
    """After the run, every live node's table is what offline routing gives without the bridge."""
    topo = make_topology(6, 5, seed=2, redundant=0.5)
    sim = RouteSim(topo, seed=2)
    victim = topo.bridges[0]
    _, target, _ = offline_routes(topo, sim.base_records, dead=[victim], rank_keys=sim.rank_keys)
    sim.run_for(2_000)
    sim.kill(victim, target)
    sim.run_for(20_000)
    for i in range(topo.nodes):
        if i != victim:
            assert sim.tables[i] == target[i], i
    assert sim.unconverged() == 0
    # and the offline target is plain shortest-path reachability: every ordinary
    # node routes to every other mesh still connected to its own (< MAX_ROUTES here)
    vm = topo.node_meshes[victim]
    links = [ln for ln in topo.links if len(topo.bridges_of_link[ln]) > 1 or set(ln) != set(vm)]
    for i in range(6 * 5):
        comp, todo = {topo.node_meshes[i][0]}, [topo.node_meshes[i][0]]
        while todo:
            x = todo.pop()
            for a, b in links:
                for y in (b,) if a == x else (a,) if b == x else ():
                    if y not in comp:
                        comp.add(y)
                        todo.append(y)
        t = target[i]
        assert t is not None and len(t) == len(comp) - 1
