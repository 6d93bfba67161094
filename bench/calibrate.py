"""Calibrate the simulator against real daemons: one record change, sim vs ``smegd``.

    uv run python bench/calibrate.py --nodes 30 [--changes 8] [--sim-seeds 20]
                                     [--sync 2 --pull 20 --heartbeat 2 --timeout 2]
                                     [--skip-real] [--json bench/out/calibrate.json]

**Real**: ``--nodes`` ``smegd`` daemons (``wgBackend: memory``: no WireGuard,
real gRPC/TLS between network namespaces on the test bed's bridge), one per
namespace, all peers, one mesh formed with the real CLI. After the mesh has
converged, every pair's gRPC channel is warm (one probe round) and the daemons
are idle (their summed CPU below ``--idle-cpu`` % of a core), ``--changes``
nodes in turn run ``smegctl put-alias``. Arrival is read from the daemons'
logs at ``logLevel: debug``: ``Daemon._emit`` logs every ``Changed`` output
with the keys and ``time.time()`` (µs resolution, one clock for every
namespace). The change's t0 is the subject's own line; a node's delay is its
first line naming the subject's key after t0.

**Sim**: ``smegmesh.sim.Simulator`` with the same N, gossip and liveness
settings, no loss and the measured bridge latency (one-way = RTT / 2, no
per-node spread), the same number of changes (``update_self(alias=...)``) per
seed, same spacing, over ``--sim-seeds`` seeds. A third row re-runs the sim with
the per-hop cost fitted from the real run as its one-way latency (what a
``--hop-cost-ms`` option would add).

Prints p50 / p99 / p100 (ms after t0 until that fraction of the *other* N - 1
nodes has the change; mean over changes) and the ratios. Results and the
method: docs/CALIBRATION.md. Needs root and network namespaces (not
wireguard-go). Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
AGREE = 0.30  # "agree" = every ratio within 1 +- 30 %
QS = ("p50", "p99", "p100")
_CHANGED = re.compile(r"changed (\S+) at (\d+\.\d+)\s*$")


# ----------------------------------------------------------------------------- results
@dataclass
class ChangeResult:
    origin: str
    delays_ms: list[float | None]  # one per other node
    cpu_s: float | None = None  # daemons' CPU during the change window minus idle
    push_msgs: int | None = None  # sim only: Push requests during the window

    def quantiles(self) -> dict[str, float | None]:
        from smegmesh.sim.metrics import percentiles

        return percentiles(list(self.delays_ms))  # type: ignore[arg-type]


@dataclass
class Run:
    label: str
    changes: list[ChangeResult] = field(default_factory=list)
    wall_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        """Mean over changes of each quantile (None if any change missed a node)."""
        out: dict[str, float | None] = {}
        for q in QS:
            vals = [c.quantiles()[q] for c in self.changes]
            got = [v for v in vals if v is not None]
            out[q] = statistics.mean(got) if got and len(got) == len(vals) else None
        p100s = [c.quantiles()["p100"] for c in self.changes]
        out["p100_median"] = (
            None if not p100s or any(v is None for v in p100s) else statistics.median(p100s)  # type: ignore[type-var]
        )
        pooled = sorted(d for c in self.changes for d in c.delays_ms if d is not None)
        out["pooled_p50"] = statistics.median(pooled) if pooled else None
        out["reached"] = sum(1 for c in self.changes for d in c.delays_ms if d is not None) / max(
            1, sum(len(c.delays_ms) for c in self.changes)
        )
        return out


# ----------------------------------------------------------------------------- sim
def run_sim(
    label: str,
    n: int,
    seeds: Sequence[int],
    changes: int,
    gap_ms: int,
    warm_ms: int,
    latency_ms: float,
    jitter_sigma: float,
    timeout_ms: int,
    gossip: Any,
    liveness: Any,
) -> Run:
    from smegmesh.sim.metrics import Spread, holds_version
    from smegmesh.sim.simulator import T0, NetParams, Simulator

    run = Run(label)
    t_wall = time.perf_counter()
    net = NetParams(
        latency_ms=latency_ms,
        node_sigma=0.0,
        jitter_sigma=jitter_sigma,
        loss=0.0,
        rpc_timeout_ms=timeout_ms,
    )
    for seed in seeds:
        sim = Simulator.steady(n, seed=seed, net=net, gossip=gossip, liveness=liveness)
        spreads: list[Spread] = []
        nodes = sim.nodes

        def obs(
            i: int,
            keys: frozenset[bytes],
            now: int,
            spreads: list[Spread] = spreads,
            nodes: list[Any] = nodes,
        ) -> None:
            for s in spreads:
                s.observe(i, keys, now, nodes[i].node.mesh)

        sim.observers.append(obs)
        sim.run_until(T0 + warm_ms)
        for k in range(changes):
            subject = (k * n) // changes
            sn = sim.nodes[subject]
            pushes0 = sim.traffic.by_type.get("Push", [0, 0])[0]
            outs = sn.node.update_self(sim.now, alias=f"cal{seed}x{k}")
            rec = sn.node.mesh.record(sn.key)
            assert rec is not None
            sp = Spread(sn.key, sim.now, holds_version(sn.key, rec.version))
            spreads[:] = [sp]
            sim.command(subject, outs)
            sim.run_until(sim.now + gap_ms)
            others = [x.index for x in sim.nodes if x.index != subject]
            delays = [float(d) if d is not None else None for d in sp.delays(others)]
            pushes = sim.traffic.by_type.get("Push", [0, 0])[0] - pushes0
            run.changes.append(ChangeResult(f"seed{seed}/n{subject}", delays, push_msgs=pushes))
    run.wall_s = time.perf_counter() - t_wall
    return run


# ----------------------------------------------------------------------------- real
class LogTail:
    """Incremental reader of one daemon's log: (time, key prefixes) of its ``changed`` lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.buf = b""
        self.events: list[tuple[float, frozenset[str]]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        for raw in lines:
            if b" changed " not in raw:
                continue
            m = _CHANGED.search(raw.decode(errors="replace"))
            if m:
                self.events.append((float(m.group(2)), frozenset(m.group(1).split(","))))

    def first(self, key: str, after: float) -> float | None:
        for t, keys in self.events:
            if t >= after and key in keys:
                return t
        return None


def _cpu_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def _machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def _rtt_ms(node: Any, address: str, count: int = 50) -> tuple[float, float] | None:
    """(avg, mdev) RTT of ``ping -6`` from a namespace node."""
    proc = node.run(
        ["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1", address],
        check=False,
        timeout=count + 10,
    )
    for line in proc.stdout.splitlines():
        if "min/avg/max" in line:
            vals = line.split("=")[1].split()[0].split("/")
            return float(vals[1]), float(vals[3])
    return None


def measure_rtt(bed: Any, pairs: int = 4) -> dict[str, float] | None:
    nodes = bed.nodes
    got = [r for dst in nodes[1 : 1 + pairs] if (r := _rtt_ms(nodes[0], dst.address)) is not None]
    if not got:
        return None
    return {
        "avg_ms": statistics.mean(a for a, _ in got),
        "mdev_ms": statistics.mean(m for _, m in got),
    }


def rpc_child(endpoint: str, state_dir: str, caller_dir: str, mesh_id: str, count: int) -> None:
    """Inside a namespace: ``count`` sequential Ping calls to ``endpoint``; JSON ms to stdout.

    The caller uses a member's identity (``caller_dir``), so the callee answers
    as it does a SWIM probe: gRPC over pinned TLS, Ed25519 signature per call.
    """
    import asyncio

    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.messages import Ping
    from smegmesh.core.wire import encode
    from smegmesh.daemon.transport import RpcClient, TlsIdentity

    async def go() -> list[float]:
        seed = (Path(caller_dir) / "identity.key").read_bytes()
        client = RpcClient(NodeIdentity.from_seed(seed), timeout=5.0)
        fp = TlsIdentity.load_or_create(Path(state_dir)).fingerprint
        body = encode(Ping(mesh_id, 0))
        for _ in range(5):  # channel set-up and warm-up
            await client.call(endpoint, fp, body)
        out = []
        for _ in range(count):
            t = time.perf_counter()
            await client.call(endpoint, fp, body)
            out.append((time.perf_counter() - t) * 1000)
        await client.close()
        return out

    print(json.dumps(asyncio.run(go())))


def micro_costs(rounds: int = 2000) -> dict[str, float]:
    """In-process CPU cost (ms) of the per-message crypto and codec steps."""
    from smegmesh.core.identity import NodeIdentity, verify_signature
    from smegmesh.core.record import NodeRecord, Role
    from smegmesh.core.sync import Push
    from smegmesh.core.wire import decode, encode

    ident = NodeIdentity.generate(os.urandom)
    blob = os.urandom(200)
    sig = ident.sign(blob)
    out: dict[str, float] = {}
    t = time.perf_counter()
    for _ in range(rounds):
        ident.sign(blob)
    out["ed25519_sign_ms"] = (time.perf_counter() - t) * 1000 / rounds
    t = time.perf_counter()
    for _ in range(rounds):
        verify_signature(ident.sign_public_key, blob, sig)
    out["ed25519_verify_ms"] = (time.perf_counter() - t) * 1000 / rounds
    now = int(time.time() * 1000)
    rec = NodeRecord.create(
        ident, "calib", version=now, now_ms=now, role=Role.PEER, control_endpoint="[::1]:4000"
    )
    try:
        msg: Any = Push("calib", (rec,))
        data = encode(msg)
        t = time.perf_counter()
        for _ in range(rounds):
            decode(encode(msg))
        out["push_codec_ms"] = (time.perf_counter() - t) * 1000 / rounds
        out["push_bytes"] = float(len(data))
    except (TypeError, ValueError):
        pass
    return out


def run_real(args: argparse.Namespace, log: Any) -> Run:
    from smegmesh.testbed.cluster import Cluster, Daemon, Timings
    from smegmesh.testbed.netns import Testbed, wait_until

    class MemDaemon(Daemon):
        def config(self) -> dict[str, Any]:
            cfg = super().config()
            cfg["wgBackend"] = "memory"
            cfg.pop("wgSocketDir", None)
            return cfg

    class MemCluster(Cluster):
        daemon_type = MemDaemon

    timings = Timings(
        sync_interval=args.sync,
        heartbeat_interval=args.heartbeat,
        pull_interval=args.pull,
        timeout=args.timeout,
        log_level="debug",
    )
    n = args.nodes
    run = Run("real smegd")
    wall: dict[str, float] = {}
    t_all = time.monotonic()
    with Testbed() as bed, MemCluster(bed, timings) as cluster:
        log(f"real: {n} smegd (wgBackend memory) on test bed {bed.prefix}")
        t = time.monotonic()
        peers: list[Daemon] = []
        while len(peers) < n:
            peers += cluster.add_many(min(args.batch, n - len(peers)))
        wall["start_s"] = time.monotonic() - t
        rtt = measure_rtt(bed)
        run.notes["rtt_bridge"] = rtt
        log(f"  {n} daemons up in {wall['start_s']:.1f}s; bridge RTT {rtt}")
        t = time.monotonic()
        first = peers[0]
        mesh_id = cluster.new_mesh(first)
        token = cluster.invite(first, mesh_id, uses=n - 1)
        for i in range(1, n, args.batch):
            cluster.map(lambda d: cluster.join(d, token), peers[i : i + args.batch])
        wall["join_s"] = time.monotonic() - t
        keys = cluster.keys(mesh_id, peers)
        cluster.wait_members(mesh_id, peers, set(keys.values()), timeout=300)
        wall["converge_s"] = time.monotonic() - t
        log(f"  joins {wall['join_s']:.1f}s, membership converged after {wall['converge_s']:.1f}s")
        pids = [d.pid for d in peers if d.pid]
        # Warm every channel: each node probes every other once per N x probe interval.
        warm = n * args.heartbeat / 2 + 2
        t = time.monotonic()
        log(f"  warming channels ({warm:.0f}s: one probe round), then waiting until idle")
        time.sleep(warm)  # deliberate: let one full SWIM probe round open every channel

        def idle_rate(window: float = 3.0) -> float:
            c0, w0 = _cpu_ticks(pids), time.monotonic()
            time.sleep(window)  # deliberate: a CPU sampling window
            return 100.0 * (_cpu_ticks(pids) - c0) / CLK_TCK / (time.monotonic() - w0)

        rates: list[float] = []

        def quiet() -> bool:
            rates.append(idle_rate())
            return bool(rates[-1] <= args.idle_cpu)

        wait_until(quiet, timeout=600, interval=0, what=f"daemons idle (<= {args.idle_cpu}% CPU)")
        wall["idle_s"] = time.monotonic() - t
        idle_pct = statistics.mean([*rates[-1:], idle_rate(5.0)])
        run.notes["idle_cpu_pct_all_daemons"] = idle_pct
        run.notes["rtt_loaded"] = measure_rtt(bed)
        log(
            f"  idle after {wall['idle_s']:.0f}s: all daemons {idle_pct:.1f}% of a core; "
            f"RTT now {run.notes['rtt_loaded']}; load {os.getloadavg()[0]:.1f}"
        )
        child = [sys.executable, os.path.abspath(__file__), "--rpc-child"]
        child += [f"[{peers[1].node.address}]:4000", peers[1].state_dir, peers[0].state_dir]
        child += [mesh_id, "200"]
        proc = peers[0].node.run(child, check=False, timeout=120)
        try:
            rtts = sorted(json.loads(proc.stdout.strip().splitlines()[-1]))
            run.notes["rpc_ping_ms"] = {
                "p50": statistics.median(rtts),
                "p90": rtts[int(0.9 * len(rtts))],
                "min": rtts[0],
            }
        except (ValueError, IndexError):
            run.notes["rpc_ping_ms"] = None
            log(f"  rpc bench failed: {proc.stderr.strip()[-500:]}")
        log(f"  one Ping call (gRPC+TLS+signature, loaded machine): {run.notes['rpc_ping_ms']}")
        tails = {d.name: LogTail(d.log_path) for d in peers}
        for tl in tails.values():
            tl.poll()
        gap = args.sync * (3 + 1) + 2  # infectionCount (3) push rounds, then quiet
        busy: list[float] = []
        for k in range(args.changes):
            subject = peers[(k * n) // args.changes]
            skey = keys[subject.name][:12]
            others = [d for d in peers if d is not subject]
            c0, m0 = _cpu_ticks(pids), _machine_busy()
            t_cmd = time.time()
            subject.ctl("put-alias", "--meshid", mesh_id, "--alias", f"cal{k}")
            deadline = t_cmd + args.pull * 2 + 10

            def t0_found(
                tail: LogTail = tails[subject.name], key: str = skey, after: float = t_cmd - 0.5
            ) -> float | None:
                tail.poll()
                return tail.first(key, after)

            t0 = wait_until(t0_found, timeout=30, interval=0.05, what="subject's own change")
            assert t0 is not None
            arrivals: dict[str, float | None] = {}
            while time.time() < deadline:
                for d in others:
                    if arrivals.get(d.name) is None:
                        tails[d.name].poll()
                        arrivals[d.name] = tails[d.name].first(skey, t0)
                if all(v is not None for v in arrivals.values()):
                    break
                time.sleep(0.1)
            time.sleep(max(0.0, t0 + gap - time.time()))  # deliberate: the push rounds end
            cpu = (_cpu_ticks(pids) - c0) / CLK_TCK
            m1 = _machine_busy()
            win = time.time() - t_cmd
            busy.append(100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]))
            extra = cpu - idle_pct / 100.0 * win
            delays = [
                (a - t0) * 1000 if (a := arrivals.get(d.name)) is not None else None for d in others
            ]
            res = ChangeResult(subject.name, delays, cpu_s=extra)
            run.changes.append(res)
            q = res.quantiles()
            log(
                f"  change {k + 1}/{args.changes} from {subject.name}: "
                + ", ".join(f"{x} {_ms(q[x])}" for x in QS)
                + f"; daemons' extra CPU {extra * 1000:.0f} ms; machine busy {busy[-1]:.0f}%"
            )
        run.notes["machine_busy_pct"] = statistics.mean(busy) if busy else None
        run.notes["loadavg"] = os.getloadavg()[0]
        t = time.monotonic()
    wall["teardown_s"] = time.monotonic() - t
    run.wall_s = time.monotonic() - t_all
    run.notes["wall"] = wall
    return run


# ----------------------------------------------------------------------------- report
def _ms(v: float | None) -> str:
    if v is None:
        return "never"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def table(real: Run | None, sims: list[Run]) -> tuple[str, bool | None]:
    head = ["run", "changes", *[f"{q} ms" for q in QS], "p100 median ms"]
    head += [f"{q} real/sim" for q in QS]
    rows = []
    verdict: bool | None = None
    rs = real.summary() if real else None
    for r in ([real] if real else []) + sims:
        s = r.summary()
        ratios = [_ratio(rs[q], s[q]) if rs and r is not real else None for q in QS]
        rows.append(
            [r.label, str(len(r.changes)), *[_ms(s[q]) for q in QS], _ms(s["p100_median"])]
            + [f"{x:.2f}" if x is not None else "-" for x in ratios]
        )
        if r is sims[0] and rs:
            verdict = all(x is not None and abs(x - 1) <= AGREE for x in ratios)
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.rjust(w[i]) for i, h in enumerate(head)) + " |"]
    lines.append("|" + "|".join("-" * (x + 2) for x in w) + "|")
    lines += ["| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nodes", type=int, default=30)
    p.add_argument("--changes", type=int, default=8, help="changes, each from another node")
    p.add_argument("--sim-seeds", type=int, default=20, help="sim repetitions (seeds 1..k)")
    p.add_argument("--sync", type=float, default=2.0, help="syncInterval (s)")
    p.add_argument("--pull", type=float, default=20.0, help="pullInterval (s)")
    p.add_argument("--heartbeat", type=float, default=2.0, help="heartbeatInterval (s)")
    p.add_argument("--timeout", type=float, default=2.0, help="RPC timeout (s)")
    p.add_argument("--rtt-ms", type=float, default=None, help="sim RTT (default: measured)")
    p.add_argument("--jitter", type=float, default=0.2, help="sim per-message jitter sigma")
    p.add_argument("--idle-cpu", type=float, default=40.0, help="idle: daemons' sum, %% core")
    p.add_argument("--batch", type=int, default=8, help="daemons started/joined at once")
    p.add_argument("--skip-real", action="store_true", help="sim only (needs --rtt-ms)")
    p.add_argument("--json", type=Path, default=OUT / "calibrate.json")
    p.add_argument("--rpc-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rpc_child:
        ep, sd, cd, mid, cnt = args.rpc_child
        rpc_child(ep, sd, cd, mid, int(cnt))
        return 0

    from smegmesh.core.gossip import GossipParams
    from smegmesh.core.liveness import LivenessParams

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    micro = micro_costs()
    log("per-message CPU, this process: " + ", ".join(f"{k} {v:.3g}" for k, v in micro.items()))
    real: Run | None = None
    if not args.skip_real:
        problem = _environment_problem()
        if problem:
            log(f"calibrate: cannot run real daemons here: {problem}")
            return 1
        real = run_real(args, log)
    rtt = args.rtt_ms
    if rtt is None:
        measured = real.notes.get("rtt_bridge") if real else None
        rtt = measured["avg_ms"] if measured else 0.1
    gossip = GossipParams(
        sync_interval_ms=int(args.sync * 1000), pull_interval_ms=int(args.pull * 1000)
    )
    liveness = LivenessParams.from_heartbeat(int(args.heartbeat * 1000))
    seeds = list(range(1, args.sim_seeds + 1))
    gap_ms = int((args.sync * 4 + 2) * 1000)
    warm_ms = int(max(10.0, args.nodes * args.heartbeat / 2) * 1000)
    common = dict(
        n=args.nodes,
        seeds=seeds,
        changes=args.changes,
        gap_ms=gap_ms,
        warm_ms=warm_ms,
        timeout_ms=int(args.timeout * 1000),
        gossip=gossip,
        liveness=liveness,
    )
    sim = run_sim(
        f"sim, one-way {rtt / 2:.3g} ms",
        latency_ms=rtt / 2,
        jitter_sigma=args.jitter,
        **common,
    )
    sims = [sim]
    log(f"sim: {len(sim.changes)} changes in {sim.wall_s:.1f}s wall")
    fit: dict[str, float] = {}
    if real is not None:
        rs, ss = real.summary(), sim.summary()
        # In the sim a hop costs max(1 ms, one-way latency) (1 ms event granularity), so the
        # sim's median delay is the median hop depth x that; the real one is depth x hop cost.
        hop_sim = max(1.0, rtt / 2)
        if rs["pooled_p50"] and ss["pooled_p50"]:
            hops = ss["pooled_p50"] / hop_sim
            fit["median_hops"] = hops
            fit["hop_cost_ms"] = rs["pooled_p50"] / hops
            fit["hop_cost_minus_wire_ms"] = fit["hop_cost_ms"] - rtt / 2
            pushes = [c.push_msgs for c in sim.changes if c.push_msgs]
            cpus = [c.cpu_s for c in real.changes if c.cpu_s is not None]
            if pushes and cpus:
                fit["push_msgs_per_change_sim"] = statistics.mean(pushes)
                fit["cpu_ms_per_change_real"] = statistics.mean(cpus) * 1000
                fit["cpu_ms_per_push"] = (
                    fit["cpu_ms_per_change_real"] / fit["push_msgs_per_change_sim"]
                )
            cal = run_sim(
                f"sim, hop cost {fit['hop_cost_ms']:.2g} ms (fitted)",
                latency_ms=fit["hop_cost_ms"],
                jitter_sigma=max(args.jitter, 0.5),
                **common,
            )
            sims.append(cal)
    text, verdict = table(real, sims)
    print(
        f"\nDissemination of one record change, {args.nodes} nodes, syncInterval {args.sync:g}s, "
        f"pullInterval {args.pull:g}s, heartbeat {args.heartbeat:g}s, loss 0, sim RTT "
        f"{rtt:.3f} ms (ms after t0 until 50/99/100 % of the other {args.nodes - 1} nodes; "
        "mean over changes)\n"
    )
    print(text)
    if real is not None:
        print(
            f"\nbridge RTT idle {real.notes.get('rtt_bridge')}, "
            f"loaded {real.notes.get('rtt_loaded')}"
        )
        print(
            f"daemons idle CPU {real.notes.get('idle_cpu_pct_all_daemons', 0):.1f}% of a core "
            f"(all {args.nodes}); machine busy during changes "
            f"{real.notes.get('machine_busy_pct') or 0:.0f}%; wall {real.notes.get('wall')}"
        )
        print(f"one Ping call between two namespaces: {real.notes.get('rpc_ping_ms')}")
        print("per-message CPU: " + ", ".join(f"{k} {v:.3g}" for k, v in micro.items()))
        if fit:
            print("per-hop fit: " + ", ".join(f"{k} {v:.3g}" for k, v in fit.items()))
        word = "AGREE" if verdict else "DISAGREE"
        print(f"\nsim vs real within {AGREE:.0%} on p50/p99/p100: {word}")
    OUT.mkdir(parents=True, exist_ok=True)
    dump = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rtt_ms_used": rtt,
        "fit": fit,
        "micro": micro,
        "agree": verdict,
        "runs": [
            {
                "label": r.label,
                "summary": r.summary(),
                "wall_s": r.wall_s,
                "notes": r.notes,
                "changes": [
                    {
                        "origin": c.origin,
                        "quantiles": c.quantiles(),
                        "cpu_s": c.cpu_s,
                        "push_msgs": c.push_msgs,
                        "delays_ms": c.delays_ms,
                    }
                    for c in r.changes
                ],
            }
            for r in ([real] if real else []) + sims
        ],
    }
    args.json.write_text(json.dumps(dump, indent=1))
    print(f"\nresults: {args.json}")
    return 0


def _environment_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = f"smc{os.getpid() % 10000}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


if __name__ == "__main__":
    if os.environ.get("PYTHONHASHSEED") != "0":  # the engine iterates sets of bytes (sim)
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    del os.environ["PYTHONHASHSEED"]  # read at start-up; the daemons get the usual random one
    raise SystemExit(main())
