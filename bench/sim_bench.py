"""Simulator benchmarks (docs/SCALE.md): dissemination, failure, join, traffic, false prunes.

Runs the real ``MeshNode`` engine in ``smegmesh.sim`` and prints tables;
writes PNG plots to bench/out/

    uv run python bench/sim_bench.py                       # 100, 1000, 3000 nodes
    uv run python bench/sim_bench.py --sizes 100 --fp-sizes 100   # CI-sized
    uv run python bench/sim_bench.py --sizes 10000 --only change  # ~12 GB, ~3 min: see SCALE.md
    uv run python bench/sim_bench.py --sizes 0 --fp-sizes 3000 --fp-losses 0.05   # false prunes
    uv run python bench/sim_bench.py --sizes 0 --fp-sizes 0 --only tune --tune-size 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from smegmesh.core.gossip import GossipParams
from smegmesh.core.liveness import LivenessParams
from smegmesh.sim.scenarios import ScenarioConfig, run_scenario
from smegmesh.sim.simulator import NetParams

OUT = Path(__file__).parent / "out"


def _fmt(v: Any) -> str:
    if v is None:
        return "never"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str], title: str) -> str:
    head = ["nodes", *cols]
    if not rows:
        return ""
    data = [[_fmt(r.get(c)) for c in head] for r in rows]
    w = [max(len(h), *(len(d[i]) for d in data)) for i, h in enumerate(head)] if data else []
    lines = [f"\n## {title}", "| " + " | ".join(h.rjust(w[i]) for i, h in enumerate(head)) + " |"]
    lines.append("|" + "|".join("-" * (x + 2) for x in w) + "|")
    lines += ["| " + " | ".join(d[i].rjust(w[i]) for i in range(len(head))) + " |" for d in data]
    return "\n".join(lines)


def run(name: str, n: int, loss: float, seconds: float, seed: int, **kw: Any) -> dict[str, Any]:
    cfg = ScenarioConfig(nodes=n, seconds=seconds, seed=seed, net=NetParams(loss=loss), **kw)
    t = time.perf_counter()
    r = run_scenario(name, cfg)
    sim = r.pop("_sim")
    spread = None
    for key in ("change", "prune", "join"):
        if f"{key}_p50" in r:
            spread = key
    if spread is not None:
        r["_cdf"] = _cdf(sim, r, spread)
    del sim
    print(
        f"  {name:<8} n={n:<6} loss={loss:<5} wall={time.perf_counter() - t:6.1f}s", file=sys.stderr
    )
    return r


def _steps(
    sim: Any, until: int, t: float, budget: float, fp: Any, crashes: list[int], tag: str
) -> None:
    from smegmesh.sim.simulator import T0

    while sim.now < until and time.perf_counter() - t < budget:
        sim.run_until(min(until, sim.now + 500))
        print(
            f"  {tag} t={(sim.now - T0) / 1000:5.1f}s (virtual, incl. 3 s warm-up)"
            f" wall={time.perf_counter() - t:6.1f}s crashes={len(crashes)}"
            f" false_prunes={len(fp.targets)} obs={len(fp.events)} events={sim.events}",
            file=sys.stderr,
            flush=True,
        )


def stepped(
    n: int,
    loss: float,
    seconds: float,
    seed: int,
    wall_budget: float,
    churn_per_min: float = 0.0,
    churn_down_s: float = 10.0,
) -> dict[str, Any]:
    """Steady (or churn) run in 0.5 s virtual steps, stopping after ``wall_budget`` s of wall.

    For runs where the prune/refute storm makes a full run too long (20 %
    loss, churn at 3,000 nodes): reports how far it got (``virtual_s`` after
    the 3 s warm-up), the false prunes and the bytes per node per second over
    the part it ran, and prints the progress to stderr. Churn is the
    ``churn`` scenario's: ``churn_per_min`` of the nodes crash per minute
    (Poisson), each restarts ``churn_down_s`` later.
    """
    from smegmesh.sim.metrics import FalsePrunes, traffic_rates
    from smegmesh.sim.scenarios import _attach
    from smegmesh.sim.simulator import T0, Simulator

    t = time.perf_counter()
    sim = Simulator.steady(n, seed=seed, net=NetParams(loss=loss))
    fp = FalsePrunes()
    _attach(sim, [], fp)
    warm, end = T0 + 3000, T0 + 3000 + int(seconds * 1000)
    _steps(sim, warm, t, wall_budget, fp, [], f"loss={loss} churn={churn_per_min} n={n} warm-up")
    tx0, rx0 = list(sim.traffic.tx), list(sim.traffic.rx)
    crashes: list[int] = []
    rate = churn_per_min * n / 60_000.0
    tc = sim.now
    while rate > 0:
        tc += max(1, int(sim.rng.expovariate(rate)))
        if tc >= end:
            break
        victim = sim.rng.randrange(n)

        def crash(v: int = victim) -> None:
            if sim.nodes[v].alive:
                sim.crash(v)
                crashes.append(sim.now)
                sim.at(sim.now + int(churn_down_s * 1000), lambda: sim.restart(v))

        sim.at(tc, crash)
    _steps(sim, end, t, wall_budget, fp, crashes, f"loss={loss} churn={churn_per_min} n={n}")
    secs = max(0.0, (sim.now - warm) / 1000)
    tx = [a - b for a, b in zip(sim.traffic.tx, tx0, strict=False)]
    rx = [a - b for a, b in zip(sim.traffic.rx, rx0, strict=False)]
    return {
        "scenario": "churn" if churn_per_min else "steady",
        "nodes": n,
        "loss": loss,
        **{"bps_" + k: v for k, v in traffic_rates(tx, rx, range(n), secs).items()},
        "virtual_s": round(secs, 3),
        "virtual_s_incl_warmup": round((sim.now - T0) / 1000, 3),
        "complete": sim.now >= end,
        "crashes": len(crashes),
        "false_prunes": len(fp.targets) if not churn_per_min else None,
        "false_prune_obs": len(fp.events) if not churn_per_min else None,
        "first_false_prune_s": (min(e[0] for e in fp.events) - T0) / 1000 if fp.events else None,
        "events": sim.events,
        "wall_s": round(time.perf_counter() - t, 1),
    }


def _cdf(sim: Any, r: dict[str, Any], kind: str) -> list[int]:
    # Observers hold the Spread objects; recover delays from the scenario's observer closure.
    for obs in sim.observers:
        cells = obs.__closure__ or ()
        for c in cells:
            v = c.cell_contents
            if isinstance(v, list) and v and hasattr(v[0], "times"):
                sp = v[0]
                return sorted(t - sp.t0 for t in sp.times.values())
    return []


def plot(results: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for scen, label in (
        ("change", "change dissemination"),
        ("crash", "crash -> pruned"),
        ("join", "join -> known"),
    ):
        rows = results.get(scen) or []
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        for r in rows:
            xs = [x / 1000 for x in r.get("_cdf", [])]
            if not xs:
                continue
            n = r["nodes"]
            ys = [(i + 1) / n for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"{n} nodes")
        ax.set_xlabel("seconds after event")
        ax.set_ylabel("fraction of nodes")
        ax.set_title(f"{label} (1% loss)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / f"sim_{scen}_cdf.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f.name)
    hb = results.get("tune_hb") or []
    if hb:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        x = [r["heartbeat_ms"] / 1000 for r in hb]
        ax.plot(x, [r["prune_p99"] / 1000 for r in hb], "o-", label="crash pruned p99 (s)")
        ax.plot(x, [r["prune_p100"] / 1000 for r in hb], "s--", label="crash pruned p100 (s)")
        ax2 = ax.twinx()
        ax2.plot(x, [r["bps_5pct_mean"] for r in hb], "^:", color="gray", label="B/s/node, 5% loss")
        ax.set_xlabel("heartbeatInterval (s)")
        ax.set_ylabel("seconds")
        ax2.set_ylabel("bytes/s per node (tx+rx)")
        ax.set_title(f"{hb[0]['nodes']:,} nodes: detection vs traffic")
        ax.grid(alpha=0.3)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
        fig.tight_layout()
        f = out / "sim_tuning.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f.name)
    rows = (results.get("steady") or []) + (results.get("churn") or [])
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
        for scen, mk in (("steady", "o-"), ("churn", "s--")):
            rs = results.get(scen) or []
            ax.plot(
                [r["nodes"] for r in rs],
                [r["bps_total_mean"] / 1000 for r in rs],
                mk,
                label=f"{scen} mean",
            )
            ax.plot(
                [r["nodes"] for r in rs],
                [r["bps_total_max"] / 1000 for r in rs],
                mk,
                alpha=0.4,
                label=f"{scen} max",
            )
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel("KB/s per node (tx+rx)")
        ax.set_title("control traffic")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = out / "sim_traffic.png"
        fig.savefig(f)
        plt.close(fig)
        files.append(f.name)
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="100,1000,3000")
    p.add_argument("--fp-sizes", default="100,1000", help="sizes for the 5%%/20%% loss runs")
    p.add_argument("--fp-losses", default="0.05,0.2", help="loss rates for the false-prune runs")
    p.add_argument(
        "--fp-wall",
        type=float,
        default=0.0,
        help="wall budget (s) per loss or churn run: run in steps, report how far it got",
    )
    p.add_argument("--only", default="change,crash,join,steady,churn,loss")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steady-seconds", type=float, default=10.0)
    p.add_argument("--fp-seconds", type=float, default=20.0)
    p.add_argument("--tune-size", type=int, default=1000, help="nodes for --only tune")
    p.add_argument("--heartbeats", default="1000,1500,2000,3000", help="tune: heartbeat ms")
    p.add_argument("--syncs", default="500,1000,2000", help="tune: syncInterval ms")
    p.add_argument("--json", type=Path, default=OUT / "sim_bench.json")
    p.add_argument(
        "--replot",
        default="",
        help="comma-separated JSON files of earlier runs: merge, print tables, plot (no runs)",
    )
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",") if x]
    fp_sizes = [int(x) for x in a.fp_sizes.split(",") if x]
    only = set(a.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    res: dict[str, list[dict[str, Any]]] = {}
    if a.replot:
        for f in a.replot.split(","):
            for k, v in json.loads(Path(f).read_text()).items():
                res.setdefault(k, []).extend(v)
        for v in res.values():
            v.sort(key=lambda r: r["nodes"])
        sizes, fp_sizes, only = [], [], set()
    for n in sizes:
        for scen, secs in (
            ("change", 15.0),
            ("crash", 15.0),
            ("join", 15.0),
            ("steady", a.steady_seconds),
            ("churn", a.steady_seconds),
        ):
            if scen in only:
                if scen == "churn" and a.fp_wall > 0:
                    r = stepped(n, 0.01, secs, a.seed, a.fp_wall, churn_per_min=0.2)
                else:
                    r = run(scen, n, 0.01, secs, a.seed, churn_per_min=0.2)
                res.setdefault(scen, []).append(r)
    if "loss" in only:
        for n in fp_sizes:
            for loss in (float(x) for x in a.fp_losses.split(",") if x):
                if a.fp_wall > 0:
                    r = stepped(n, loss, a.fp_seconds, a.seed, a.fp_wall)
                else:
                    r = run("steady", n, loss, a.fp_seconds, a.seed)
                res.setdefault("loss", []).append(r)
    if "tune" in only:
        n = a.tune_size
        for hb in (int(x) for x in a.heartbeats.split(",") if x):
            lv = LivenessParams.from_heartbeat(hb)
            c = run("crash", n, 0.01, 15.0, a.seed, liveness=lv)
            s = run("steady", n, 0.05, a.fp_seconds, a.seed, liveness=lv)
            res.setdefault("tune_hb", []).append(
                {
                    "nodes": n,
                    "heartbeat_ms": hb,
                    **{k: c[k] for k in ("prune_p50", "prune_p99", "prune_p100")},
                    "bps_5pct_mean": s["bps_total_mean"],
                    "bps_5pct_max": s["bps_total_max"],
                    "false_prunes_5pct": s["false_prunes"],
                }
            )
        for sy in (int(x) for x in a.syncs.split(",") if x):
            g = GossipParams(sync_interval_ms=sy)
            c = run("change", n, 0.01, 15.0, a.seed, gossip=g)
            res.setdefault("tune_sync", []).append(
                {
                    "nodes": n,
                    "sync_ms": sy,
                    **{k: c[k] for k in ("change_p50", "change_p99", "change_p100")},
                    "bps_during_change_mean": c["bps_total_mean"],
                }
            )
    for r in res.get("crash", []):
        b = r["detect_bound_ms"]
        for q in ("p50", "p99", "p100"):
            v = r.get(f"prune_{q}")
            r[f"beyond_{q}"] = None if v is None else v - b
    out = []
    out.append(
        table(
            res.get("change", []),
            ["change_p50", "change_p99", "change_p100", "change_reached", "wall_s", "max_rss_mb"],
            "Dissemination of one record change (ms, 1% loss)",
        )
    )
    out.append(
        table(
            res.get("crash", []),
            [
                "prune_p50",
                "prune_p99",
                "prune_p100",
                "prune_reached",
                "beyond_p50",
                "beyond_p99",
                "beyond_p100",
                "false_prunes",
                "wall_s",
            ],
            "Crash -> pruned by live nodes (ms; beyond = minus probe_interval+suspicion)",
        )
    )
    out.append(
        table(
            res.get("join", []),
            ["join_p50", "join_p99", "join_p100", "join_reached", "wall_s"],
            "Join -> known by live nodes (ms)",
        )
    )
    out.append(
        table(
            res.get("steady", []),
            [
                "bps_tx_mean",
                "bps_tx_max",
                "bps_total_mean",
                "bps_total_max",
                "false_prunes",
                "wall_s",
            ],
            "Steady control traffic per node (bytes/s)",
        )
    )
    out.append(
        table(
            res.get("churn", []),
            [
                "crashes",
                "virtual_s",
                "bps_tx_mean",
                "bps_tx_max",
                "bps_total_mean",
                "bps_total_max",
                "wall_s",
            ],
            "Churn (20%/min crash, 10 s down) traffic per node (bytes/s)",
        )
    )
    out.append(
        table(
            res.get("loss", []),
            ["loss", "virtual_s", "false_prunes", "false_prune_obs", "bps_total_mean", "wall_s"],
            "False prunes of live nodes under loss",
        )
    )
    out.append(
        table(
            res.get("tune_hb", []),
            [
                "heartbeat_ms",
                "prune_p50",
                "prune_p99",
                "prune_p100",
                "bps_5pct_mean",
                "bps_5pct_max",
                "false_prunes_5pct",
            ],
            "heartbeatInterval: crash -> pruned (ms, 1% loss); traffic, false prunes at 5% loss",
        )
    )
    out.append(
        table(
            res.get("tune_sync", []),
            ["sync_ms", "change_p50", "change_p99", "change_p100", "bps_during_change_mean"],
            "syncInterval: change dissemination (ms, 1% loss)",
        )
    )
    print("\n".join(out))
    files = plot(res, OUT)
    print("\nplots:", ", ".join(f"bench/out/{f}" for f in files))
    if not a.replot:
        a.json.write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":  # the engine iterates sets of bytes
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    raise SystemExit(main())
