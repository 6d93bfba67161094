"""Route convergence after a bridge failure, many meshes (docs/ROUTE-SCALE.md).

    uv run python bench/route_bench.py --ladder 10,30,100 --per-mesh 28 --seeds 1,2,3
    uv run python bench/route_bench.py --meshes 100 --kill redundant --json bench/out/route.json

One row per (meshes, seed, kill): build the steady state (routes converged
offline), run ``--steady`` s, crash one bridge, run until every node's
selected routes equal the offline post-failure routes (then ``--tail`` s more).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import Any

from smegmesh.sim.routerun import RouteSimConfig, run_bridge_failure

COLS = [
    ("meshes", "meshes"),
    ("nodes", "nodes"),
    ("bridges", "bridges"),
    ("seed", "seed"),
    ("kill", "kill"),
    ("affected_nodes", "affected"),
    ("routes_per_node_pre", "routes/node"),
    ("conv_p50_s", "p50 s"),
    ("conv_p99_s", "p99 s"),
    ("conv_max_s", "max s"),
    ("conv_affected_p50_s", "aff p50 s"),
    ("steady_bytes_per_node_s", "steady B/node/s"),
    ("conv_bytes_per_node_s", "conv B/node/s"),
    ("peak_bytes_per_node_s", "peak B/node/s"),
    ("unconverged", "unconv"),
    ("wall_total_s", "wall s"),
]


def row(r: dict[str, Any]) -> str:
    return "| " + " | ".join(str(r.get(k)) for k, _ in COLS) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--meshes", type=int, default=10)
    ap.add_argument("--ladder", help="comma-separated mesh counts (overrides --meshes)")
    ap.add_argument("--per-mesh", type=int, default=28, help="ordinary members per mesh")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--kill", default="sole", help="sole, redundant or both")
    ap.add_argument("--steady", type=float, default=10.0)
    ap.add_argument("--tail", type=float, default=5.0)
    ap.add_argument("--loss", type=float, default=0.01)
    ap.add_argument("--redundant", type=float, default=0.2, help="share of links with 2 bridges")
    ap.add_argument("--extra-links", type=float, default=0.25, help="extra links per mesh")
    ap.add_argument("--json", type=Path, help="append one JSON line per run")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    ladder = [int(x) for x in a.ladder.split(",")] if a.ladder else [a.meshes]
    kills = ["sole", "redundant"] if a.kill == "both" else [a.kill]
    print("| " + " | ".join(h for _, h in COLS) + " |")
    print("|" + "---|" * len(COLS))
    for m in ladder:
        for seed in (int(s) for s in a.seeds.split(",")):
            for kill in kills:
                cfg = RouteSimConfig(
                    meshes=m,
                    per_mesh=a.per_mesh,
                    seed=seed,
                    kill=kill,
                    steady_s=a.steady,
                    tail_s=a.tail,
                    loss=a.loss,
                    redundant=a.redundant,
                    extra_links=a.extra_links,
                )
                r = run_bridge_failure(cfg, progress=a.progress)
                r["wall_total_s"] = round(
                    r["wall_build_s"]
                    + r["wall_offline_post_s"]
                    + r["wall_steady_s"]
                    + r["wall_after_kill_s"],
                    1,
                )
                r["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
                print(row(r), flush=True)
                if a.json:
                    a.json.parent.mkdir(parents=True, exist_ok=True)
                    with a.json.open("a") as f:
                        f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
