"""Real daemons in network namespaces: join-to-connectivity, memory and idle CPU.

    uv run python bench/join_bench.py [--join-size 10] [--trials 3]
                                      [--idle-size 30] [--idle-seconds 20] [--fast]

1. **Join to full connectivity.** A mesh of ``join-size - 1`` peers; then, per
   trial, a fresh node (a peer, and one client behind NAT) runs ``smegctl
   join-mesh``; from the moment the command returns, the new node pings every
   member over the overlay (``ping -i 0.05``, all members in parallel) and we
   record when the last one answered. The node then leaves, so every trial
   joins a ``join-size``-node mesh. Target: <= 3 s.
2. **Idle cost.** A mesh of ``idle-size`` peers, converged and settled; then
   RSS (``VmRSS``) and CPU time (``utime + stime`` from ``/proc/PID/stat``) of
   every ``smegd`` and every wireguard-go over ``idle-seconds``. Targets:
   smegd RSS <= 100 MB (issue 14, which replaced issue 4's 80 MB; the RSS
   floor of the required libraries is printed beside it, and the ratio),
   idle CPU <= 1 % of a core.

Timings are the product defaults (syncInterval 1 s, pullInterval 3 s,
heartbeatInterval 2 s); ``--prototype`` uses the prototype's 2 / 20 / 60 s.
Needs root, network namespaces and wireguard-go.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table

from smegmesh.testbed.cluster import Cluster, Daemon, Timings
from smegmesh.testbed.netns import Testbed, environment_problem, netns_pids, wait_until

console = Console(highlight=False)
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOIN_TARGET_S = 3.0
RSS_TARGET_MB = 100.0  # issue 14 (was 80 MB in issue 4)
CPU_TARGET_PCT = 1.0


def _start_batched(cluster: Cluster, n: int, role: str, batch: int = 6) -> list[Daemon]:
    out: list[Daemon] = []
    while len(out) < n:
        out += cluster.add_many(min(batch, n - len(out)), role)
    return out


def _join_batched(cluster: Cluster, token: str, nodes: Sequence[Daemon], batch: int = 6) -> None:
    for i in range(0, len(nodes), batch):
        cluster.map(lambda d: cluster.join(d, token), nodes[i : i + batch])


def _ping_until(d: Daemon, address: str, deadline_s: float) -> float | None:
    """Seconds until the first echo reply (None: none before the deadline).

    ``ping`` exits at once while the overlay interface or route does not exist
    yet ("Network is unreachable"), so it is restarted until the deadline.
    """
    t0 = time.monotonic()
    while (left := deadline_s - (time.monotonic() - t0)) > 0:
        argv = ["ip", "netns", "exec", d.node.ns, "ping", "-6", "-n", "-q", "-c", "1"]
        argv += ["-i", "0.05", "-w", str(max(1, int(left))), address]
        proc = subprocess.run(argv, capture_output=True, timeout=left + 10, check=False)
        if proc.returncode == 0:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def join_trial(
    cluster: Cluster, mesh_id: str, first: Daemon, members: list[Daemon], joiner: Daemon
) -> dict[str, float | None]:
    token = cluster.invite(first, mesh_id, uses=1)
    t0 = time.monotonic()
    cluster.join(joiner, token)
    t_ret = time.monotonic()
    addrs = cluster.addresses(mesh_id, members)
    with ThreadPoolExecutor(len(members)) as pool:
        got = list(pool.map(lambda a: _ping_until(joiner, a, 20), addrs.values()))
    reached = [g for g in got if g is not None]
    full = max(reached) if len(reached) == len(got) else None
    res = {
        "join_cmd_s": t_ret - t0,
        "to_full_s": full,
        "first_s": min(reached) if reached else None,
        "median_s": statistics.median(reached) if reached else None,
        "missing": float(len(got) - len(reached)),
    }
    joiner.ctl("leave-mesh", "--meshid", mesh_id)
    return res


def bench_join(size: int, trials: int, timings: Timings) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with Testbed() as bed, Cluster(bed, timings) as cluster:
        console.print(f"[bold]join bench[/bold]: {size - 1}-peer mesh, test bed {bed.prefix}")
        members = _start_batched(cluster, size - 1, "peer")
        joiners = _start_batched(cluster, trials, "peer")
        cjoiners = _start_batched(cluster, 1, "client")
        first = members[0]
        mesh_id = cluster.new_mesh(first)
        token = cluster.invite(first, mesh_id, uses=len(members) - 1)
        _join_batched(cluster, token, members[1:])
        keys = set(cluster.keys(mesh_id, members).values())
        cluster.wait_members(mesh_id, members, keys, timeout=120)
        cluster.wait_full_connectivity(mesh_id, members, timeout=120)
        console.print(f"  base mesh of {len(members)} formed and connected")
        for j in [*joiners, *cjoiners]:
            r = join_trial(cluster, mesh_id, first, members, j)
            r_row: dict[str, object] = {"joiner": f"{j.name} ({j.role})", **r}
            rows.append(r_row)
            full = r["to_full_s"]
            console.print(
                f"  {j.name:<8} join-mesh {r['join_cmd_s']:.2f}s, then all {len(members)} "
                f"members answered after "
                + (f"{full:.2f}s" if full is not None else f"[red]✗ ({r['missing']:.0f} missing)")
            )
            # Back to `size - 1` members before the next trial.
            wait_until(
                lambda: all(
                    len(cluster.live_keys(m, mesh_id) or ()) == len(members) for m in members
                ),
                timeout=30,
                what="leaver gone",
            )
    return rows


def _proc_cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _proc_mem_mb(pid: int) -> dict[str, float] | None:
    """RSS, PSS (shared pages split among sharers) and private memory, in MB."""
    vals: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    vals[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return None
    return {
        "rss": vals.get("Rss", 0) / 1024,
        "pss": vals.get("Pss", 0) / 1024,
        "private": (vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)) / 1024,
    }


def bench_idle(size: int, seconds: float, timings: Timings) -> dict[str, object]:
    with Testbed() as bed, Cluster(bed, timings) as cluster:
        console.print(f"[bold]idle bench[/bold]: {size}-peer mesh, test bed {bed.prefix}")
        t0 = time.monotonic()
        peers = _start_batched(cluster, size, "peer", batch=8)
        console.print(f"  {size} daemons started in {time.monotonic() - t0:.0f}s")
        first = peers[0]
        mesh_id = cluster.new_mesh(first)
        token = cluster.invite(first, mesh_id, uses=size - 1)
        _join_batched(cluster, token, peers[1:], batch=8)
        console.print(f"  {size - 1} joins done after {time.monotonic() - t0:.0f}s")
        keys = set(cluster.keys(mesh_id, peers).values())
        cluster.wait_members(mesh_id, peers, keys, timeout=180)
        console.print(f"  membership converged after {time.monotonic() - t0:.0f}s")
        # Every WireGuard has every other peer, then let joins' after-effects settle.
        wait_until(
            lambda: all(len(p.wg_peer_keys(mesh_id) or ()) == size - 1 for p in peers),
            timeout=120,
            interval=0.5,
            what="WireGuard complete everywhere",
        )
        settle = max(10.0, 2 * timings.sync_interval * 4)
        console.print(f"  WireGuard complete; settling {settle:.0f}s, measuring {seconds:.0f}s")
        time.sleep(settle)  # deliberate: an idle period, not a wait for an event
        daemons = {p.name: p.pid for p in peers if p.pid}
        wg = {}
        for p in peers:
            others = [x for x in netns_pids(p.node.ns) if x != p.pid]
            if others:
                wg[p.name] = others[0]
        before = {n: _proc_cpu_ticks(pid) for n, pid in daemons.items()}
        wg_before = {n: _proc_cpu_ticks(pid) for n, pid in wg.items()}
        t_start = time.monotonic()
        time.sleep(seconds)  # deliberate: the measurement window
        elapsed = time.monotonic() - t_start
        after = {n: _proc_cpu_ticks(pid) for n, pid in daemons.items()}
        wg_after = {n: _proc_cpu_ticks(pid) for n, pid in wg.items()}

        def pct(b: dict[str, int | None], a: dict[str, int | None]) -> list[float]:
            out = []
            for n in b:
                if b[n] is not None and a.get(n) is not None:
                    out.append(100.0 * (a[n] - b[n]) / CLK_TCK / elapsed)  # type: ignore[operator]
            return out

        cpu = pct(before, after)
        wg_cpu = pct(wg_before, wg_after)
        mem = [m for pid in daemons.values() if (m := _proc_mem_mb(pid)) is not None]
        wg_mem = [m for pid in wg.values() if (m := _proc_mem_mb(pid)) is not None]
        alive = sum(1 for p in peers if p.alive())
        still = all(len(cluster.live_keys(p, mesh_id) or ()) == size for p in peers[:3])
        return {
            "size": size,
            "seconds": elapsed,
            "alive": alive,
            "still_converged": still,
            "rss": [m["rss"] for m in mem],
            "pss": [m["pss"] for m in mem],
            "private": [m["private"] for m in mem],
            "cpu": cpu,
            "wg_rss": [m["rss"] for m in wg_mem],
            "wg_cpu": wg_cpu,
        }


#: The libraries smegd must use (DEVELOPERS.md, issue 4): gRPC for node-to-node
#: RPC, FastAPI+uvicorn+pydantic for the API, cryptography for keys, pyroute2
#: for netlink. Imported into a bare interpreter, they alone set an RSS floor.
#: pyroute2 as smegd imports it: rtnetlink and WireGuard's generic netlink,
#: not the package's ``__init__`` that loads all of it (smegmesh.net.netlink;
#: the whole package costs about 5 MB more).
REQUIRED_LIBRARIES = (
    "pydantic",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "cryptography.hazmat.primitives.asymmetric.x25519",
    "grpc",
    "fastapi",
    "uvicorn",
    "pyroute2",
)
_FLOOR_SCRIPT = """
import ctypes, gc, importlib, sys
for m in sys.argv[1:]:
    if m == "pyroute2":
        from smegmesh.net.netlink import iproute_class, wireguard_class
        iproute_class(), wireguard_class()
    else:
        importlib.import_module(m)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
"""


def library_floor_mb() -> float | None:
    """RSS of a bare interpreter that has imported :data:`REQUIRED_LIBRARIES`."""
    proc = subprocess.run(
        [sys.executable, "-c", _FLOOR_SCRIPT, *REQUIRED_LIBRARIES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        return int(proc.stdout.strip()) / 1024
    except ValueError:
        return None


def _stats(xs: list[float]) -> tuple[float, float, float]:
    if not xs:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return statistics.median(xs), max(xs), statistics.mean(xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--join-size", type=int, default=10)
    p.add_argument("--trials", type=int, default=3, help="peer joins measured (+1 client)")
    p.add_argument("--idle-size", type=int, default=30)
    p.add_argument("--idle-seconds", type=float, default=20)
    p.add_argument("--fast", action="store_true", help="test timings (1/5/2 s)")
    p.add_argument(
        "--prototype",
        action="store_true",
        help="the prototype's timings (sync 2, pull 20, hb 60 s)",
    )
    p.add_argument("--skip-join", action="store_true")
    p.add_argument("--skip-idle", action="store_true")
    args = p.parse_args(argv)
    problem = environment_problem()
    if problem is not None:
        console.print(f"[red]join_bench: cannot run here: {problem}[/red]")
        return 1
    timings = (
        Timings(sync_interval=1, heartbeat_interval=2, pull_interval=5, timeout=2)
        if args.fast
        else Timings(sync_interval=2, heartbeat_interval=60, pull_interval=20, timeout=5)
        if args.prototype
        else Timings(sync_interval=1, heartbeat_interval=2, pull_interval=3, timeout=5)
    )
    console.print(
        f"timings: syncInterval {timings.sync_interval:g}s, pullInterval "
        f"{timings.pull_interval:g}s, heartbeatInterval {timings.heartbeat_interval:g}s; "
        f"{os.cpu_count()} CPUs"
    )
    ok = True
    if not args.skip_join:
        rows = bench_join(args.join_size, args.trials, timings)
        t = Table(title=f"join into a {args.join_size}-node mesh", header_style="bold")
        for col in ("joiner", "join-mesh cmd", "first reply", "median", "all members", "target"):
            t.add_column(col, justify="right")
        for r in rows:
            full = r["to_full_s"]
            good = full is not None and float(full) <= JOIN_TARGET_S  # type: ignore[arg-type]
            ok &= good
            t.add_row(
                str(r["joiner"]),
                f"{r['join_cmd_s']:.2f} s",
                f"{r['first_s']:.2f} s" if r["first_s"] is not None else "✗",
                f"{r['median_s']:.2f} s" if r["median_s"] is not None else "✗",
                f"{full:.2f} s" if full is not None else "✗",
                f"≤ {JOIN_TARGET_S:g} s " + ("[green]ok[/green]" if good else "[red]MISS[/red]"),
            )
        console.print(t)
    if not args.skip_idle:
        res = bench_idle(args.idle_size, args.idle_seconds, timings)
        t = Table(
            title=f"idle cost per node, {res['size']}-peer mesh, over {res['seconds']:.0f} s",
            header_style="bold",
        )
        for col in ("process", "RSS median", "RSS max", "CPU median", "CPU max", "target"):
            t.add_column(col, justify="right")
        rss_m, rss_x, _ = _stats(res["rss"])  # type: ignore[arg-type]
        cpu_m, cpu_x, _ = _stats(res["cpu"])  # type: ignore[arg-type]
        wrss_m, wrss_x, _ = _stats(res["wg_rss"])  # type: ignore[arg-type]
        wcpu_m, wcpu_x, _ = _stats(res["wg_cpu"])  # type: ignore[arg-type]
        good_rss = rss_x <= RSS_TARGET_MB
        good_cpu = cpu_x <= CPU_TARGET_PCT
        ok &= good_rss and good_cpu
        t.add_row(
            "smegd",
            f"{rss_m:.1f} MB",
            f"{rss_x:.1f} MB",
            f"{cpu_m:.2f} %",
            f"{cpu_x:.2f} %",
            f"RSS ≤ {RSS_TARGET_MB:g} MB "
            + ("[green]ok[/green]" if good_rss else "[red]MISS[/red]")
            + f", CPU ≤ {CPU_TARGET_PCT:g} % "
            + ("[green]ok[/green]" if good_cpu else "[red]MISS[/red]"),
        )
        t.add_row(
            "wireguard-go",
            f"{wrss_m:.1f} MB",
            f"{wrss_x:.1f} MB",
            f"{wcpu_m:.2f} %",
            f"{wcpu_x:.2f} %",
            "-",
        )
        console.print(t)
        pss_m, _, _ = _stats(res["pss"])  # type: ignore[arg-type]
        priv_m, _, _ = _stats(res["private"])  # type: ignore[arg-type]
        console.print(
            f"  smegd median PSS {pss_m:.1f} MB, private {priv_m:.1f} MB "
            "(RSS counts the shared libraries every daemon maps)"
        )
        floor = library_floor_mb()
        if floor is not None:
            names = sorted({m.split(".")[0] for m in REQUIRED_LIBRARIES})
            console.print(
                f"  RSS floor of the required libraries alone (a bare interpreter "
                f"importing {', '.join(names)}): {floor:.1f} MB; smegd's median "
                f"RSS is {rss_m / floor:.2f}x that"
            )
        console.print(
            f"  daemons alive: {res['alive']}/{res['size']}; "
            f"membership still complete: {res['still_converged']}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
