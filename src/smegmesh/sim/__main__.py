"""``python -m smegmesh.sim``: run one scenario and print its metrics."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

from smegmesh.core.gossip import GossipParams
from smegmesh.core.liveness import LivenessParams
from smegmesh.sim.overhead import MODELS
from smegmesh.sim.scenarios import SCENARIOS, ScenarioConfig, run_scenario
from smegmesh.sim.simulator import NetParams


def _pin_hash_seed(argv0: list[str]) -> None:
    """Re-exec with PYTHONHASHSEED=0: the engine iterates sets of bytes (see docs/SCALE.md)."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *argv0, *sys.argv[1:]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m smegmesh.sim", description=__doc__)
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--seconds", type=float, default=30.0, help="virtual seconds after warm-up")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--loss", type=float, default=0.01, help="one-way message loss (0..1)")
    p.add_argument(
        "--wire-overhead",
        nargs="?",
        const="stream",
        default=None,
        choices=MODELS,
        help="bytes include the real transport's per-message overhead (sim/overhead.py): "
        "stream (the default: every call over gRPC/TLS) or datagram (small calls as datagrams)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scenario", choices=SCENARIOS, default="steady")
    p.add_argument("--latency-ms", type=float, default=20.0, help="median one-way latency")
    p.add_argument("--timeout-ms", type=int, default=1000, help="RPC timeout")
    p.add_argument("--heartbeat-ms", type=int, default=None, help="LivenessParams.from_heartbeat")
    p.add_argument("--sync-ms", type=int, default=None, help="gossip syncInterval")
    p.add_argument("--pull-ms", type=int, default=None, help="gossip pullInterval")
    p.add_argument("--cluster-size", type=int, default=None)
    p.add_argument("--branch", type=int, default=None)
    p.add_argument(
        "--full-push",
        type=int,
        default=None,
        help="targets of a round of received items that get them in full, the others an "
        "offer (core/offer.py); >= --branch: every push in full (the protocol before offers)",
    )
    p.add_argument(
        "--batch-ms",
        type=int,
        default=None,
        help="hold received items arriving within this long of a push for one batched "
        "push (GossipParams.batch_ms; 0: push each at once)",
    )
    p.add_argument(
        "--round-fanout",
        type=int,
        help="targets of a periodic gossip round's offer (GossipParams.round_fanout; "
        "default: --branch)",
    )
    _dissemination_args(p)
    _scenario_args(p)
    p.add_argument("--byte-sample", type=int, default=1, help="encode 1 message in k per type")
    p.add_argument(
        "--authority",
        action="store_true",
        help="founding record and admission chains (always on for --scenario evict)",
    )
    p.add_argument(
        "--verify-sample",
        type=float,
        default=0.0,
        help="share of delivered messages decoded from their wire bytes (0..1); "
        "also verifies the prebuilt state's signatures",
    )
    p.add_argument(
        "--mesh-id",
        default="sim",
        help="the mesh id every message and record carries (default 'sim', 3 characters; "
        "a generated id such as amber-falcon-river-k7q2 is 23, so real messages are "
        "about 20 bytes larger; with --authority the founding record's id is used)",
    )
    p.add_argument(
        "--kinds",
        action="store_true",
        help="also count gossip messages by kind, in the measured window: pushes by hop and "
        "what they carried, push acks saying news or nothing new, empty wants, offered and "
        "wanted keys, sync steps by part (tree nodes, leaves, wants, items)",
    )
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _dissemination_args(p: argparse.ArgumentParser) -> None:
    """Flags of the lazy rounds and of tree dissemination."""
    p.add_argument(
        "--infection-count",
        type=int,
        default=None,
        help="periodic rounds that offer a fresh item after its push (GossipParams)",
    )
    p.add_argument(
        "--dissemination",
        choices=("gossip", "tree"),
        default=None,
        help="forward received items to random members (gossip, the default) or along a "
        "spanning tree of the key space (tree: core/treecast.py; docs/SCALE.md, section 15; "
        "as smegd's key, it makes the periodic rounds 1 target for 1 round unless "
        "--round-fanout or --infection-count say otherwise)",
    )
    p.add_argument("--tree-fanout", type=int, default=None, help="children per tree member")
    p.add_argument(
        "--mixed-share",
        type=float,
        default=0.0,
        help="share of members (a draw per member) that run the other dissemination, as "
        "smegd's other setting of the key makes it: a mesh half switched (default 0)",
    )


def _scenario_args(p: argparse.ArgumentParser) -> None:
    """Flags of one scenario each: churn and partition."""
    p.add_argument("--churn-per-min", type=float, default=0.05)
    p.add_argument(
        "--churn-lead",
        type=float,
        default=0.0,
        help="churn: seconds of churn before the measured window (0: the window starts "
        "with the churn and its first 10 s hold no restarts; 10 or more: steady churn)",
    )
    p.add_argument("--partition-seconds", type=float, default=10.0)
    p.add_argument(
        "--silent-forwarders",
        type=int,
        default=0,
        help="hostile members that forward nothing they receive: the top of the tree "
        "(sim/silent.py)",
    )


def config_from_args(a: argparse.Namespace) -> ScenarioConfig:
    if not 0.0 <= a.mixed_share <= 1.0:
        raise SystemExit("--mixed-share must be within [0, 1]")
    g = GossipParams()
    changes = {
        k: v
        for k, v in (
            ("sync_interval_ms", a.sync_ms),
            ("pull_interval_ms", a.pull_ms),
            ("cluster_size", a.cluster_size),
            ("branch", a.branch),
            ("full_push", a.full_push),
            ("batch_ms", a.batch_ms),
            ("round_fanout", a.round_fanout),
            ("infection_count", a.infection_count),
            ("dissemination", a.dissemination),
            ("tree_fanout", a.tree_fanout),
        )
        if v is not None
    }
    if a.dissemination is not None:  # as smegd's key; explicit flags win
        g = g.as_dissemination(a.dissemination)
    g = replace(g, **changes)
    lv = (
        LivenessParams.from_heartbeat(a.heartbeat_ms, timeout_ms=None)
        if a.heartbeat_ms
        else LivenessParams()
    )
    return ScenarioConfig(
        nodes=a.nodes,
        seconds=a.seconds,
        warmup=a.warmup,
        seed=a.seed,
        net=NetParams(
            latency_ms=a.latency_ms,
            loss=a.loss,
            rpc_timeout_ms=a.timeout_ms,
            wire_overhead=a.wire_overhead or False,
        ),
        gossip=g,
        liveness=lv,
        byte_sample=a.byte_sample,
        churn_per_min=a.churn_per_min,
        churn_lead=a.churn_lead,
        partition_seconds=a.partition_seconds,
        authority=a.authority,
        verify_sample=a.verify_sample,
        mesh_id=a.mesh_id,
        kinds=a.kinds,
        silent_forwarders=a.silent_forwarders,
        mixed_share=a.mixed_share,
    )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    res = run_scenario(a.scenario, config_from_args(a))
    sim = res.pop("_sim")
    kinds = res.get("kinds") if not a.json else None
    if kinds is not None:
        del res["kinds"]
    window_types = res.pop("window_by_type", {}) if not a.json else {}
    if a.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        width = max(len(k) for k in res)
        for k, v in res.items():
            print(f"{k:<{width}}  {round(v, 2) if isinstance(v, float) else v}")
        print("traffic by message type (count, bytes):")
        tm = sim.traffic.type_models
        for name, (cnt, size) in sorted(sim.traffic.by_type.items()):
            models = "".join(
                f" {m}={tm[(name, m)]}" for m in ("payload", *MODELS) if (name, m) in tm
            )
            print(f"  {name:<12} {cnt:>10} {size:>14}{models}")
        if window_types:
            print("in the measured window, sent per node per second (messages, bytes, payload):")
            for name, row in window_types.items():
                pay = row.get("bps_payload", row["bps"])
                print(
                    f"  {name:<12} {row['msgs'] / max(res['virtual_s'] * a.nodes, 1):>10.3f}"
                    f" {row['bps']:>10.1f} {pay:>10.1f}"
                )
        if kinds is not None:
            print("gossip messages by kind (count):")
            for name, cnt in kinds.items():
                print(f"  {name:<72} {cnt:>10}")
    return 0


if __name__ == "__main__":
    _pin_hash_seed(["-m", "smegmesh.sim"])
    raise SystemExit(main())
