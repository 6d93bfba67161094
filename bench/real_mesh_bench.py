"""Many real ``smegd`` on loopback: formation, idle cost, the simulator calibrated at N.

    uv run python bench/real_mesh_bench.py --members 100            # ~6-8 min, loads both CPUs
    uv run python bench/real_mesh_bench.py --members 20 --changes 4 --crashes 2   # ~2 min

``--members`` daemons on loopback (``::1``, memory WireGuard backend, the
harness of ``smegmesh.testbed.loopback``), with the product's protocol defaults
(syncInterval 1 s, pullInterval 3 s, heartbeatInterval 2 s, timeout 5 s) and
``logLevel: debug`` (the only debug line on the hot path is the ``changed``
line this bench reads; see ``bench/calibrate.py``). Phases:

1. **Start** the daemons ``--batch`` at a time (each until its API answers).
2. **Form** one mesh through invitations, joins arriving ``--batch`` at a
   time: for each batch a member already in the mesh (a random one) invites
   with ``uses = batch`` and the batch joins concurrently (``POST /v1/join``,
   what ``smegctl join-mesh`` does). Per join: wall time and outcome.
3. **Settle**: every daemon lists all members; then ``--settle`` s.
4. **Idle**: CPU (``utime + stime`` from ``/proc/PID/stat``), RSS, open fds
   and TCP sockets of every daemon over ``--idle-seconds``; beside them, in
   the same window, one more ``smegd`` that is in no mesh (the floor of an
   idle daemon process on this machine at this load) and the machine's busy
   share from ``/proc/stat``.
5. **Changes**: ``--changes`` alias changes, each from another member, every
   ``--gap`` s; per other member, the delay until its log shows the change.
6. **Crashes**: ``--crashes`` members SIGKILLed one after the other; per live
   member, the delay until its log shows the prune.
7. **Simulator**: the same N, protocol parameters and RPC timeout, loss 0,
   ``node_sigma`` 0, repeated over ``--sim-seeds`` seeds: changes and crashes
   as above. Two latency models: loopback (one-way 0.05 ms, which the
   simulator rounds up to its 1 ms event step) and a fitted per-hop cost (the
   one-way latency set so that the sim's change p50 equals the real one, as in
   docs/CALIBRATION.md).

Quantiles are pooled over all events (every delay of every change or crash).
Prints the tables, writes ``bench/out/real_mesh.json`` and a CDF plot
``bench/out/real_mesh_cdf.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

OUT = HERE / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CPU_TARGET_PCT = 1.0
P99_AGREE = 0.25


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- /proc
def cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fd_counts(pid: int) -> tuple[int, int] | None:
    """(open fds, of which sockets)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    socks = 0
    for n in names:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{n}").startswith("socket:"):
                socks += 1
    return len(names), socks


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def threads(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


# ----------------------------------------------------------------------------- log tails
class Tails:
    """All daemons' logs read incrementally: (time, key prefixes) of their ``changed`` lines."""

    def __init__(self, paths: dict[str, Path]) -> None:
        from calibrate import LogTail

        self.tails = {name: LogTail(str(p)) for name, p in paths.items()}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for t in self.tails.values():  # skip what was logged before
            with contextlib.suppress(FileNotFoundError):
                t.offset = os.path.getsize(t.path)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with self._lock:
                for t in self.tails.values():
                    t.poll()

    def first(self, name: str, key: str, after: float) -> float | None:
        with self._lock:
            return self.tails[name].first(key, after)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- results
@dataclass
class Events:
    label: str
    delays_ms: list[list[float | None]] = field(default_factory=list)  # per event

    def pooled(self) -> dict[str, float | None]:
        allv = [d for ev in self.delays_ms for d in ev]
        got = sorted(d for d in allv if d is not None)
        out: dict[str, float | None] = {"events": len(self.delays_ms)}
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            need = max(1, math.ceil(q * len(allv) - 1e-9)) if allv else 0
            out[name] = got[need - 1] if allv and need <= len(got) else None
        maxes = [max((d for d in ev if d is not None), default=None) for ev in self.delays_ms]
        ok = [m for m in maxes if m is not None]
        out["p100_median"] = statistics.median(ok) if ok else None
        out["reached"] = len(got) / len(allv) if allv else None
        return out


# ----------------------------------------------------------------------------- real
def real_run(args: argparse.Namespace) -> dict[str, Any]:
    from smegmesh.testbed.loopback import Cluster, wait_until

    n = args.members
    res: dict[str, Any] = {"members": n, "cpus": os.cpu_count()}
    extra = {
        "logLevel": "debug",
        "syncInterval": 1,
        "pullInterval": 3,
        "heartbeatInterval": 2,
        "timeout": 5,
    }
    c = Cluster()
    try:
        t0 = time.monotonic()
        solo = c.add(1, wait=False, extra={**extra, "logLevel": "info"})[0]
        solo.wait_ready(300)
        ds: list[Any] = []
        while len(ds) < n:  # a batch at a time, each until it serves (slow on a busy box)
            new = c.add(min(args.batch, n - len(ds)), wait=False, extra=extra)
            for d in new:
                d.wait_ready(300)
            ds += new
        res["start_s"] = time.monotonic() - t0
        log(f"{n} daemons started in {res['start_s']:.0f} s (+1 solo)")
        solo_fd0 = fd_counts(solo.proc.pid)  # type: ignore[union-attr]
        res["fds_no_mesh"] = solo_fd0[0] if solo_fd0 else None
        res["rss_no_mesh_mb"] = rss_mb(solo.proc.pid)  # type: ignore[union-attr]

        # ---- form
        founder = ds[0]
        mesh_id = founder.api("POST", "/v1/meshes")["mesh_id"]
        members = [founder]
        joins: list[dict[str, Any]] = []
        rng = random.Random(1)
        t_form = time.monotonic()
        for i in range(1, n, args.batch):
            batch = ds[i : i + args.batch]
            inviter = rng.choice(members)
            tok = inviter.api(
                "POST",
                f"/v1/meshes/{mesh_id}/invites",
                json={"ttl_s": 3600, "uses": len(batch)},
            )["token"]
            out: dict[str, dict[str, Any]] = {}

            def join(d: Any, tok: str = tok, out: dict[str, dict[str, Any]] = out) -> None:
                t = time.monotonic()
                attempts = 0
                while True:  # as a user would: "try again later" (503) is tried again, once
                    attempts += 1
                    try:
                        d.api("POST", "/v1/join", json={"token": tok}, timeout=120)
                        ok, err = True, ""
                    except Exception as e:  # recorded, the bench goes on
                        ok, err = False, str(e)[:200]
                    if ok or "503" not in err or attempts >= 2:
                        break
                dt = time.monotonic() - t
                out[d.name] = {
                    "size": len(members),
                    "s": dt,
                    "ok": ok,
                    "err": err,
                    "attempts": attempts,
                }

            ths = [threading.Thread(target=join, args=(d,)) for d in batch]
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            for d in batch:
                joins.append({"name": d.name, **out[d.name]})
                if out[d.name]["ok"]:
                    members.append(d)
                else:
                    log(f"join of {d.name} at {len(members)} members failed: {out[d.name]['err']}")
            js = [out[d.name]["s"] for d in batch]
            log(f"{len(members)} members; batch of {len(batch)} joined in {max(js):.1f} s")
        res["form_s"] = time.monotonic() - t_form
        res["joins"] = joins
        res["join_failures"] = sum(1 for j in joins if not j["ok"])
        res["joins_retried"] = sum(1 for j in joins if j["attempts"] > 1)
        ok_s = sorted(j["s"] for j in joins if j["ok"])
        res["join_s_p50"] = statistics.median(ok_s) if ok_s else None
        res["join_s_max"] = ok_s[-1] if ok_s else None
        keys = {d.name: d.self_key(mesh_id) for d in members}
        want = set(keys.values())

        def converged() -> bool:
            return all(d.mesh_keys(mesh_id) == want for d in members)

        t_conv = time.monotonic()
        try:
            wait_until(converged, args.converge_wait, 2.0, f"{len(members)} members converged")
            res["converged"] = True
        except AssertionError:  # measured anyway: what a starved mesh does is the finding
            res["converged"] = False
            views = [len(d.mesh_keys(mesh_id) & want) for d in members]
            res["members_seen_min"] = min(views)
            log(f"NOT converged after {args.converge_wait:.0f} s: views {min(views)}-{max(views)}")
        res["converge_after_form_s"] = time.monotonic() - t_conv
        log(f"{len(members)} members, {res['converge_after_form_s']:.0f} s after form")
        deadline = time.monotonic() + args.settle
        while time.monotonic() < deadline:  # deliberate: the settle period is the measurement
            time.sleep(1)

        # ---- idle
        pids = {d.name: d.proc.pid for d in members}  # type: ignore[union-attr]
        spid = solo.proc.pid  # type: ignore[union-attr]
        b0 = {k: cpu_ticks(p) for k, p in pids.items()}
        s0 = cpu_ticks(spid)
        m0 = machine_busy()
        w0 = time.monotonic()
        time.sleep(args.idle_seconds)  # deliberate: the measurement window
        wall = time.monotonic() - w0
        m1 = machine_busy()
        b1 = {k: cpu_ticks(p) for k, p in pids.items()}
        s1 = cpu_ticks(spid)
        pct = [
            100.0 * (b1[k] - b0[k]) / CLK_TCK / wall  # type: ignore[operator]
            for k in pids
            if b0[k] is not None and b1[k] is not None
        ]
        fds = [fc for p in pids.values() if (fc := fd_counts(p)) is not None]
        rss = [r for p in pids.values() if (r := rss_mb(p)) is not None]
        thr = [t for p in pids.values() if (t := threads(p)) is not None]
        res["idle"] = {
            "seconds": wall,
            "cpu_pct_median": statistics.median(pct),
            "cpu_pct_p90": sorted(pct)[int(0.9 * (len(pct) - 1))],
            "cpu_pct_max": max(pct),
            "cpu_pct_sum": sum(pct),
            "solo_cpu_pct": 100.0 * (s1 - s0) / CLK_TCK / wall if s0 and s1 else None,  # type: ignore[operator]
            "machine_busy_pct": 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]),
            "load_avg": os.getloadavg()[0],
            "fds_median": statistics.median(f for f, _ in fds),
            "fds_max": max(f for f, _ in fds),
            "sockets_median": statistics.median(s for _, s in fds),
            "sockets_max": max(s for _, s in fds),
            "rss_mb_median": statistics.median(rss),
            "rss_mb_max": max(rss),
            "threads_max": max(thr),
            "solo_rss_mb": rss_mb(spid),
        }
        log("idle: " + ", ".join(f"{k} {v:.3g}" for k, v in res["idle"].items()))

        # ---- changes and crashes, arrivals from the logs
        tails = Tails({d.name: d.log_path for d in members})
        try:
            changes = Events("real smegd")
            for k in range(args.changes):
                subj = members[(k * len(members)) // args.changes]
                skey = _key12(keys[subj.name])
                t_cmd = time.time()
                subj.api("PUT", f"/v1/meshes/{mesh_id}/alias", json={"alias": f"rm{k}"})
                t_self = wait_until(
                    lambda s=subj.name, kk=skey, a=t_cmd - 0.5: tails.first(s, kk, a),
                    timeout=30,
                    interval=0.05,
                    what="the subject's own change",
                )
                others = [d for d in members if d is not subj]
                end = time.time() + args.gap
                while time.time() < end:  # the gap is the push + sync rounds' window
                    time.sleep(0.2)
                ev = [tails.first(d.name, skey, t_self) for d in others]
                changes.delays_ms.append([(a - t_self) * 1000 if a else None for a in ev])
                log(f"change {k}: {changes.delays_ms[-1] and _q(changes.delays_ms[-1])}")
            crashes = Events("real smegd")
            live = list(members)
            for k in range(args.crashes):
                victim = live[1 + (k * (len(live) - 1)) // max(1, args.crashes)]
                vkey = _key12(keys[victim.name])
                live.remove(victim)
                t_kill = time.time()
                victim.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

                def all_pruned(v: str = vkey, t: float = t_kill) -> bool:
                    return all(tails.first(d.name, v, t) is not None for d in live)

                with contextlib.suppress(AssertionError):
                    wait_until(all_pruned, timeout=args.crash_wait, interval=0.5, what="prune")
                ev = [tails.first(d.name, vkey, t_kill) for d in live]
                crashes.delays_ms.append([(a - t_kill) * 1000 if a else None for a in ev])
                log(f"crash {k}: {_q(crashes.delays_ms[-1])}")
                victim.proc.wait(10)  # type: ignore[union-attr]
                time.sleep(args.gap / 2)  # deliberate: the previous prune's pushes are over
        finally:
            tails.stop()
        res["false_prunes_during_run"] = None
        res["real_changes"] = changes.delays_ms
        res["real_crashes"] = crashes.delays_ms
        fds_end = [fc[0] for p in pids.values() if (fc := fd_counts(p)) is not None]
        res["fds_max_end"] = max(fds_end) if fds_end else None
        res["tracebacks"] = c.tracebacks()
    finally:
        c.close()
    return res


def _key12(text_key: str) -> str:
    """The prefix of a key as the ``changed`` log line writes it (``key_to_text(k)[:12]``)."""
    return text_key[:12]


def _q(delays: list[float | None]) -> str:
    e = Events("x", [delays]).pooled()
    return f"p50 {_ms(e['p50'])} p99 {_ms(e['p99'])} reached {e['reached']:.2f}"


def _ms(v: float | None) -> str:
    if v is None:
        return "never"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


# ----------------------------------------------------------------------------- sim
def sim_run(
    n: int, seeds: list[int], changes: int, crashes: int, latency_ms: float, jitter: float
) -> tuple[Events, Events]:
    from smegmesh.core.gossip import GossipParams
    from smegmesh.core.liveness import LivenessParams
    from smegmesh.core.state import MeshState
    from smegmesh.sim.metrics import Spread
    from smegmesh.sim.simulator import T0, NetParams, Simulator

    ch = Events(f"sim, one-way {latency_ms:.3g} ms")
    cr = Events(f"sim, one-way {latency_ms:.3g} ms")
    net = NetParams(
        latency_ms=latency_ms, node_sigma=0.0, jitter_sigma=jitter, loss=0.0, rpc_timeout_ms=5000
    )
    gossip = GossipParams(sync_interval_ms=1000, pull_interval_ms=3000)
    liveness = LivenessParams.from_heartbeat(2000)
    for seed in seeds:
        sim = Simulator.steady(n, seed=seed, net=net, gossip=gossip, liveness=liveness)
        spreads: list[Spread] = []

        def obs(
            i: int, keys: frozenset[bytes], now: int, sp: list[Spread] = spreads, sim: Any = sim
        ) -> None:
            for s in sp:
                s.observe(i, keys, now, sim.nodes[i].node.mesh)

        sim.observers.append(obs)
        sim.run_until(T0 + 10_000)
        for k in range(changes):
            subj = (k * n) // changes
            sn = sim.nodes[subj]
            outs = sn.node.update_self(sim.now, alias=f"rm{seed}x{k}")
            rec = sn.node.mesh.record(sn.key)
            assert rec is not None

            def has(st: MeshState, key: bytes = sn.key, v: int = rec.version) -> bool:
                r = st.record(key)
                return r is not None and r.version >= v

            sp = Spread(sn.key, sim.now, has)
            spreads[:] = [sp]
            sim._outs(subj, outs)
            sim._reschedule(subj)
            sim.run_until(sim.now + 6000)
            others = [x.index for x in sim.nodes if x.index != subj]
            ch.delays_ms.append([float(d) if d is not None else None for d in sp.delays(others)])
        live = list(range(n))
        for k in range(crashes):
            victim = live[1 + (k * (len(live) - 1)) // max(1, crashes)]
            live.remove(victim)
            vk = sim.nodes[victim].key
            sim.crash(victim)

            def gone(st: MeshState, key: bytes = vk) -> bool:
                return st.live_record(key) is None

            sp = Spread(vk, sim.now, gone)
            spreads[:] = [sp]
            sim.run_until(sim.now + 20_000)
            cr.delays_ms.append([float(d) if d is not None else None for d in sp.delays(live)])
    return ch, cr


# ----------------------------------------------------------------------------- report
def table(title: str, real: Events | None, sims: list[Events]) -> str:
    head = ["run", "events", "p50 ms", "p99 ms", "p100 median ms", "p50 real/sim", "p99 real/sim"]
    rows = []
    rs = real.pooled() if real else None
    for e in ([real] if real else []) + sims:
        s = e.pooled()
        r50 = rs["p50"] / s["p50"] if rs and e is not real and rs["p50"] and s["p50"] else None
        r99 = rs["p99"] / s["p99"] if rs and e is not real and rs["p99"] and s["p99"] else None
        rows.append(
            [e.label, str(s["events"]), _ms(s["p50"]), _ms(s["p99"]), _ms(s["p100_median"])]
            + [f"{x:.2f}" if x is not None else "-" for x in (r50, r99)]
        )
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [f"{title}", "| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |"]
    lines.append("|" + "|".join("-" * (x + 2) for x in w) + "|")
    lines += ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(row)) + " |" for row in rows]
    return "\n".join(lines)


def matched_p99(real: Events, sim: Events, draws: int = 2000) -> tuple[float, float, float] | None:
    """The simulator's p99 over samples of as many events as the real run had:
    median and 5-95 % range of ``draws`` samples (seeded).

    The real run has a few events (6 crashes), the simulator ten times as many;
    a pooled p99 over 60 events catches the simulator's rare slow events (3 to
    5 in 60 crashes take over 6 s) that a sample of 6 misses more often than
    not, so the like-for-like figure is the p99 over samples of 6.
    """
    k = len(real.delays_ms)
    if not k or len(sim.delays_ms) < k:
        return None
    rng = random.Random(1)
    vals = []
    for _ in range(draws):
        v = Events("s", rng.sample(sim.delays_ms, k)).pooled()["p99"]
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    vals.sort()
    return vals[len(vals) // 2], vals[len(vals) // 20], vals[len(vals) * 19 // 20]


def plot(sets: dict[str, list[Events]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4))
    for ax, (title, evs) in zip(axes, sets.items(), strict=True):
        for e in evs:
            xs = sorted(d for ev in e.delays_ms for d in ev if d is not None)
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=e.label)
        ax.set_title(title)
        ax.set_xlabel("delay (ms)")
        ax.set_ylabel("fraction of (event, member)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--members", type=int, default=100)
    p.add_argument("--batch", type=int, default=8, help="daemons started / joins at once")
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--changes", type=int, default=8)
    p.add_argument("--crashes", type=int, default=4)
    p.add_argument("--gap", type=float, default=6.0, help="seconds between changes")
    p.add_argument("--crash-wait", type=float, default=30.0)
    p.add_argument("--converge-wait", type=float, default=300.0)
    p.add_argument("--sim-seeds", type=int, default=10)
    p.add_argument("--skip-real", type=Path, help="reuse the real figures of this JSON")
    p.add_argument("--json", type=Path, default=OUT / "real_mesh.json")
    p.add_argument("--plot", type=Path, default=OUT / "real_mesh_cdf.png")
    args = p.parse_args(argv)
    log(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    res = json.loads(args.skip_real.read_text()) if args.skip_real else real_run(args)
    n_live = res["members"] - res.get("join_failures", 0)
    rch = Events("real smegd", res["real_changes"])
    rcr = Events("real smegd", res["real_crashes"])
    seeds = list(range(1, args.sim_seeds + 1))
    t = time.perf_counter()
    sch, scr = sim_run(n_live, seeds, args.changes, args.crashes, 0.05, 0.2)
    # fitted hop cost: the one-way latency that makes the sim's change p50 the real one
    s50, r50 = sch.pooled()["p50"], rch.pooled()["p50"]
    hop = max(0.05, (r50 or 0) / (s50 or 1)) if r50 else 1.0
    fch, fcr = sim_run(n_live, seeds, args.changes, args.crashes, hop, 0.5)
    fch.label = fcr.label = f"sim, hop cost {hop:.1f} ms (fitted)"
    log(f"sim: {time.perf_counter() - t:.0f} s")
    res["sim"] = {
        "loopback": {"changes": sch.delays_ms, "crashes": scr.delays_ms},
        "fitted": {"hop_ms": hop, "changes": fch.delays_ms, "crashes": fcr.delays_ms},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    idle = res.get("idle", {})
    print(f"\n{res['members']} smegd on loopback, {os.cpu_count()} CPUs")
    print("| measure | value |\n|---|---|")
    for k in ("start_s", "form_s", "join_failures", "joins_retried", "join_s_p50", "join_s_max"):
        print(f"| {k} | {res.get(k)!s:.6} |")
    for k, v in idle.items():
        print(f"| idle {k} | {v:.4g} |" if isinstance(v, float) else f"| idle {k} | {v} |")
    print(f"| fds_no_mesh | {res.get('fds_no_mesh')} |")
    print(f"| fds max at the end | {res.get('fds_max_end')} |")
    print()
    print(table("change to all (delay per other member)", rch, [sch, fch]))
    print()
    print(table("crash pruned by all (delay per live member)", rcr, [scr, fcr]))
    for name, real, sim in (("change", rch, fch), ("crash", rcr, fcr), ("crash", rcr, scr)):
        a, b = real.pooled()["p99"], sim.pooled()["p99"]
        ok = a is not None and b is not None and abs(a / b - 1) <= P99_AGREE
        print(f"{name} p99 real/{sim.label}: {'within' if ok else 'NOT within'} 25 %")
    print("\nlike for like: the simulator's p99 over samples of the real run's event count")
    for name, real, sim in (
        ("change", rch, sch),
        ("change", rch, fch),
        ("crash", rcr, scr),
        ("crash", rcr, fcr),
    ):
        a, m = real.pooled()["p99"], matched_p99(real, sim)
        if a is None or m is None:
            continue
        ok = abs(a / m[0] - 1) <= P99_AGREE
        print(
            f"{name} p99 real {_ms(a)} / {sim.label}, {len(real.delays_ms)} events: median"
            f" {_ms(m[0])} (5-95 % {_ms(m[1])}-{_ms(m[2])}) = {a / m[0]:.2f}:"
            f" {'within' if ok else 'NOT within'} 25 %"
        )
    plot({"change to all": [rch, sch, fch], "crash pruned by all": [rcr, scr, fcr]}, args.plot)
    print(f"\n{args.json}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
