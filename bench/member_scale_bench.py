"""One real smegd as a member of a large mesh: RSS, fds, threads, idle CPU and wire bytes.

    uv run python bench/member_scale_bench.py [--sizes 100,300,1000,3000] [--procs 2]
                                             [--settle 30] [--window 30]
    uv run python bench/member_scale_bench.py --calibrate-only   # per-call wire overhead
    uv run python bench/member_scale_bench.py --replot bench/out/member_scale.json

For each size N, a swarm (``smegmesh.testbed.swarm``, ``--procs`` processes)
hosts N members; one ordinary ``smegd`` (memory backend, product defaults:
syncInterval 1 s, pullInterval 3 s, heartbeatInterval 2 s, timeout 5 s)
joins it with an invitation and is measured once every member is live in its
view and ``--settle`` seconds have passed, over ``--window`` seconds:

* RSS, open descriptors and threads (``/proc/PID``; max over the window),
  beside the RSS floor of the required libraries in a bare interpreter and the
  daemon's own RSS before it joined (both measured in the same run);
* idle CPU, % of one core (``utime + stime`` over the window);
* wire bytes per second, both directions: TCP payload of its node-to-node
  sockets (TLS records, HTTP/2 frames and HPACK headers, gRPC framing, the
  message), from the daemon's ``smegd_wire_bytes`` (``TCP_INFO``), and the
  message payload alone (``smegd_rpc_bytes``) beside it;
* outgoing channels and node-to-node sockets open at the end;
* the results of its datagram calls in the window (``datagram_results``:
  answered, or unanswered and sent again over the stream, which is what
  opens channels when the swarm answers late).

``--churn-per-min F`` measures under churn instead of idle: after the settle,
the swarm's members crash at F of them a minute and restart 10 s later with
the state they had (``smegmesh.testbed.swarm --churn-per-min``), and the
window opens after a lead of that downtime, so it sees steady churn (crashes
and the restarts of earlier ones), as the simulator's ``--churn-lead 10``
does. The swarm's members run the whole protocol under that churn, so its
CPU bounds the size: about 300 members on two cores. Results go to
``member_scale_churn.json`` (the idle plot is left alone).

``--calibrate-only`` (also run after the sizes) measures the wire bytes of one
call on the real transport by message type (payload sizes from the run's own
traffic, or typical ones): on a warm channel, and the extra cost of a new one.
Targets (issue 14): RSS <= 150 MB; fds <= 256, threads <= 16, flat from 300 to
3,000; idle CPU <= 2 %; wire <= 10 KB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from join_bench import library_floor_mb
from smegmesh.core.identity import NodeIdentity, key_from_text
from smegmesh.core.tree import tree_neighbours
from smegmesh.testbed.measured import MeasuredSmegd
from smegmesh.testbed.swarm import read_stats, start_swarm
from smegmesh.testbed.swarm_plan import node_seed
from smegmesh.testbed.wait import wait_until

TARGETS = {"rss_mb": 150.0, "fds": 256, "threads": 16, "cpu_pct": 2.0, "wire_kbs": 10.0}
OUT = Path(__file__).resolve().parent / "out"
DOC_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def _is(k: str, prefix: str) -> bool:
    """Is sample ``k`` one of metric ``prefix`` (a counter's samples end in ``_total``)?"""
    name = k.split("{", 1)[0]
    return name in (prefix, prefix + "_total")


def _sum(m: dict[str, float], prefix: str, **labels: str) -> float:
    """Sum of the samples of ``prefix`` whose labels include ``labels``."""
    total = 0.0
    for k, v in m.items():
        if not _is(k, prefix):
            continue
        if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
            total += v
    return total


def _by_type(m: dict[str, float], prefix: str, label: str = "type") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in m.items():
        if _is(k, prefix) and f'{label}="' in k:
            t = k.split(f'{label}="', 1)[1].split('"', 1)[0]
            out[t] = out.get(t, 0.0) + v
    return out


CHURN_LEAD_S = 10.0  # the swarm's downtime: the window sees restarts from its start


def tree_degree(smegd: MeasuredSmegd, mesh_id: str, size: int, fanout: int = 4) -> int | None:
    """The smegd's neighbours (parent and children) in the tree of all members, all live:
    where it sits decides what the tree costs it (a leaf: each change once, in and out)."""
    try:
        me = key_from_text(smegd.api("GET", f"/v1/meshes/{mesh_id}")["self_key"])
    except Exception:
        return None
    peers = sorted(NodeIdentity.from_seed(node_seed(1, i)).wg_public_key for i in range(size))
    parent, children = tree_neighbours(me, peers, me, fanout)
    return (parent is not None) + len(children)


def measure(
    size: int,
    procs: int,
    settle: float,
    window: float,
    root: Path,
    *,
    datagrams: bool = True,
    churn: float = 0.0,
    authority: bool = False,
    dissemination: str = "gossip",
    smegd_seed: int | None = None,
    swarm_dissemination: str | None = None,
) -> dict[str, Any]:
    base_port = 47100 + (size % 97) * procs + (0 if datagrams else 50) + (20 if authority else 0)
    tag = f"{size}-{'dgram' if datagrams else 'stream'}{'-founded' if authority else ''}"
    members = swarm_dissemination or dissemination  # the other: a mixed mesh
    tag += "-tree" if dissemination == "tree" else ""
    tag += f"-swarm-{members}" if members != dissemination else ""
    sdir = root / f"swarm-{tag}"
    workers = start_swarm(
        sdir,
        size,
        procs,
        base_port,
        datagrams=datagrams,
        churn_per_min=churn,
        authority=authority,
        dissemination=members,
    )
    extra = {"datagrams": datagrams, "dissemination": dissemination}
    smegd = MeasuredSmegd(root / f"smegd-{tag}", extra=extra)
    if smegd_seed is not None:  # a fixed identity: the same place in the tree every run
        state = smegd.dir / "state"
        state.mkdir(parents=True, exist_ok=True)
        fd = os.open(state / "identity.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(hashlib.sha256(f"smegd-{smegd_seed}".encode()).digest())
    row: dict[str, Any] = {
        "members": size,
        "procs": procs,
        "datagrams": datagrams,
        "churn_per_min": churn,
        "authority": authority,
        "dissemination": dissemination,
        "swarm_dissemination": members,
    }
    try:
        t0 = time.monotonic()
        wait_until(lambda: (sdir / "token").exists(), 900, 1.0, f"a swarm of {size} to start")
        row["swarm_start_s"] = round(time.monotonic() - t0, 1)
        mesh_id = (sdir / "mesh_id").read_text()
        smegd.start()
        row["rss_before_join_mb"] = round(smegd.sample().rss_mb, 1)
        t0 = time.monotonic()
        for attempt in range(3):  # a swarm busy at start may time out the first one
            try:
                smegd.join((sdir / "token").read_text())
                break
            except Exception:
                if attempt == 2:
                    raise
                time.sleep(5)
        row["join_s"] = round(time.monotonic() - t0, 2)
        wait_until(lambda: smegd.known_members(mesh_id) >= size + 1, 600, 1.0, "all members")
        row["all_known_s"] = round(time.monotonic() - t0, 1)
        try:  # on a starved machine swarm members may suspect each other: noted, not fatal
            wait_until(lambda: smegd.live_members(mesh_id) >= size + 1, 60, 1.0, "all live")
            row["all_live_s"] = round(time.monotonic() - t0, 1)
        except TimeoutError:
            row["all_live_s"] = None
        row["tree_degree"] = tree_degree(smegd, mesh_id, size)
        time.sleep(settle)
        _start_churn(sdir, churn)
        m0, p0, st0 = smegd.metrics(), smegd.sample(), read_stats(sdir)
        samples = [p0]
        # the swarm in the window: its worst timer lag, the fewest live in its view
        lag_window, live_window = 0.0, size + 1
        end = time.monotonic() + window
        while time.monotonic() < end:
            time.sleep(1.0)
            samples.append(smegd.sample())
            for s in read_stats(sdir):
                lag_window = max(lag_window, s.get("lag_recent_ms", 0.0))
                live_window = min(live_window, s["live_seen_by_first"])
        m1, p1 = smegd.metrics(), smegd.sample()
        samples.append(p1)
        dt = p1.t - p0.t
        wire = _sum(m1, "smegd_wire_bytes") - _sum(m0, "smegd_wire_bytes")
        # UDP datagrams (IP and UDP headers included) beside the TCP payload
        dgram = _sum(m1, "smegd_wire_datagram_bytes") - _sum(m0, "smegd_wire_datagram_bytes")
        wire += dgram
        payload = _sum(m1, "smegd_rpc_bytes") - _sum(m0, "smegd_rpc_bytes")
        sent0, sent1 = _by_type(m0, "smegd_rpc_sent"), _by_type(m1, "smegd_rpc_sent")
        recv0, recv1 = _by_type(m0, "smegd_rpc_received"), _by_type(m1, "smegd_rpc_received")
        calls = sum(sent1.values()) - sum(sent0.values()) + sum(recv1.values())
        calls -= sum(recv0.values())
        row.update(
            rss_mb=round(max(s.rss_mb for s in samples), 1),
            fds=max(s.fds for s in samples),
            threads=max(s.threads for s in samples),
            cpu_pct=round(100 * (p1.cpu_s - p0.cpu_s) / dt, 2),
            wire_kbs=round(wire / dt / 1000, 2),
            datagram_kbs=round(dgram / dt / 1000, 2),
            by_transport=_by_transport(m0, m1),
            payload_kbs=round(payload / dt / 1000, 2),
            calls_per_s=round(calls / dt, 2),
            wire_per_call=round(wire / calls) if calls else None,
            channels=int(_sum(m1, "smegd_rpc_channels")),
            sockets=int(_sum(m1, "smegd_wire_sockets")),
            live=int(_sum(m1, "smegd_members", state="live")),
            suspect=int(_sum(m1, "smegd_members", state="suspect")),
            pruned=int(_sum(m1, "smegd_members", state="pruned")),
            payload_by_type=_payload_by_type(m0, m1),
            datagram_results=_delta_by(m0, m1, "smegd_datagram_calls", "result"),
            # items pushed to it by reference (a founded mesh's settled chains and
            # prune targets left out, core/elide.py): put back whole, or fetched
            by_reference=_delta_by(m0, m1, "smegd_pushed_items_by_reference", "outcome"),
            window_s=round(dt, 1),
            load=os.getloadavg()[0],
        )
        st = read_stats(sdir)

        def grew(k: str) -> float:
            """How much the swarm's counter ``k`` (all processes) grew in the window."""
            return sum(s.get(k, 0) for s in st) - sum(s.get(k, 0) for s in st0)

        row["swarm"] = {
            "cpu_s": round(sum(s["cpu_s"] for s in st), 1),
            "cpu_pct_window": round(100 * grew("cpu_s") / dt, 1),
            "rss_mb": round(sum(s["rss_mb"] for s in st)),
            "lag_max_ms": round(max(s["lag_max_ms"] for s in st)),
            "lag_max_window_ms": round(lag_window),
            "live_min_window": live_window,
            "tasks": sum(s["tasks"] for s in st),
            # the garbage collector's time in the window (its pauses stop a swarm process)
            "gc_s_window": round(grew("gc_ms") / 1000, 1),
            "gc_full_window": grew("gc_full"),
            "failures_window": grew("failures"),
            "crashes_window": grew("crashes"),
            "restarts_window": grew("restarts"),
            "failures": sum(s["failures"] for s in st),
        }
    finally:
        smegd.stop()
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(20)
            except Exception:
                w.kill()
    return row


def _start_churn(sdir: Path, churn: float) -> None:
    """The swarm's members start crashing; the window opens after the downtime."""
    if churn:
        (sdir / "churn").touch()
        time.sleep(CHURN_LEAD_S + 1.0)


def print_churn(rows: list[dict[str, Any]]) -> bool:
    """The churn runs' summary lines (False: these rows are of an idle mesh)."""
    churned = [r for r in rows if r.get("churn_per_min")]
    for r in churned:
        sw = r["swarm"]
        print(
            f"churn {r['churn_per_min']:g}/min, {r['members']:,} members: "
            f"{sw['crashes_window']} crashes and {sw['restarts_window']} restarts "
            f"in the window{'; founded' if r.get('authority') else ''}: smegd CPU "
            f"{r['cpu_pct']} %, wire {r['wire_kbs']} KB/s, "
            f"by reference {r.get('by_reference', {})}"
        )
    return bool(churned)


def _by_transport(m0: dict[str, float], m1: dict[str, float]) -> dict[str, float]:
    """Calls made and answered over the window, by transport (stream, datagram)."""
    return {
        t: _sum(m1, "smegd_rpc_transport_calls", transport=t)
        - _sum(m0, "smegd_rpc_transport_calls", transport=t)
        for t in ("stream", "datagram")
    }


def _delta_by(
    m0: dict[str, float], m1: dict[str, float], prefix: str, label: str
) -> dict[str, float]:
    """``label`` value -> increase of ``prefix`` over the window (zeros left out)."""
    a, b = _by_type(m0, prefix, label), _by_type(m1, prefix, label)
    return {k: v - a.get(k, 0.0) for k, v in sorted(b.items()) if v - a.get(k, 0.0)}


def _payload_by_type(m0: dict[str, float], m1: dict[str, float]) -> dict[str, list[float]]:
    """type -> [calls, mean payload bytes per call (request + reply)] over the window.

    Calls both ways: those the daemon made and those it answered.
    """

    def delta(prefix: str, only: str = "") -> dict[str, float]:
        a = _by_type({k: v for k, v in m0.items() if only in k}, prefix)
        b = _by_type({k: v for k, v in m1.items() if only in k}, prefix)
        return {t: b[t] - a.get(t, 0.0) for t in b}

    calls = delta("smegd_rpc_sent")
    for t, n in delta("smegd_rpc_received").items():
        calls[t] = calls.get(t, 0.0) + n
    payload = delta("smegd_rpc_bytes")
    return {t: [n, round(payload.get(t, 0.0) / n)] for t, n in sorted(calls.items()) if n > 0}


# --------------------------------------------------------------------------- calibration
#: payloads (request, reply) by message type when no run gave them (split evenly otherwise)
TYPICAL = {"empty": (0, 0), "small": (50, 50), "1 KB": (500, 500), "8 KB": (4096, 4096)}


async def _calibrate(pairs: dict[str, tuple[int, int]], calls: int = 200) -> dict[str, Any]:
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.daemon.member_budget import MemberBudget
    from smegmesh.daemon.transport import RpcClient, RpcServer, TlsIdentity
    from smegmesh.daemon.wirestats import WireStats

    reply_size = {"n": 0}

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return b"r" * reply_size["n"]

    server = RpcServer(TlsIdentity.generate(), handler)
    # One caller makes every call of the calibration as fast as it can: past a
    # member's call budget (1,000 at once) the server would refuse them.
    server.budget = MemberBudget(1e12, 1e12, call_rate=1e12, call_burst=1e12)
    port = await server.start("127.0.0.1", 0)
    fp = server._fp
    wire = WireStats()
    out: dict[str, Any] = {"types": {}}
    try:
        # A new channel: certificate fetch, TLS handshake, HTTP/2 set-up and one empty call.
        client = RpcClient(NodeIdentity.generate(os.urandom))
        before = wire.sample()
        b0 = before.tx
        await client.call(f"127.0.0.1:{port}", fp, b"", to=bytes(32))
        await asyncio.sleep(0.2)
        first = wire.sample().tx - b0
        out["certificate_fetch"] = sum(client.fetch_wire)  # closed before any sample
        for t, (req, rep) in pairs.items():
            reply_size["n"] = rep
            body = b"q" * req
            await client.call(f"127.0.0.1:{port}", fp, body, to=bytes(32))  # HPACK warm
            await asyncio.sleep(0.05)
            b0 = wire.sample().tx
            for _ in range(calls):
                await client.call(f"127.0.0.1:{port}", fp, body, to=bytes(32))
            await asyncio.sleep(0.2)
            per_call = (wire.sample().tx - b0) / calls
            out["types"][t] = {
                "request": req,
                "reply": rep,
                "wire_per_call": round(per_call),
                "overhead_per_call": round(per_call - req - rep),
            }
        out["new_channel_first_call"] = first
        b0 = wire.sample().tx
        await client.close()
        await asyncio.sleep(0.2)
        out["channel_close"] = wire.sample().tx - b0
        # Reopened with the certificate known (the steady state: met before).
        again = RpcClient(client._identity, certificates=client._certs)
        reply_size["n"] = 0
        b0 = wire.sample().tx
        await again.call(f"127.0.0.1:{port}", fp, b"", to=bytes(32))
        await asyncio.sleep(0.2)
        out["new_channel_first_call_certificate_known"] = wire.sample().tx - b0
        await again.close()
    finally:
        await server.stop(0)
    return out


def calibrate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = dict(TYPICAL)
    for r in rows:  # the run's own mean payloads (request and reply averaged) where seen
        for t, (_n, mean) in r.get("payload_by_type", {}).items():
            pairs[t] = (int(mean) // 2, int(mean) - int(mean) // 2)
    return asyncio.run(_calibrate(pairs))


# --------------------------------------------------------------------------- output
def table(rows: list[dict[str, Any]], floor: float | None) -> str:
    lines = [
        "| members | datagrams | founded | RSS MB (x floor) | fds | threads | idle CPU % "
        "| wire KB/s (payload; of it UDP) | calls/s (by datagram) | wire B/call | channels "
        "| sockets | live/suspect/pruned | load | swarm: CPU % in window, worst lag in window ms, "
        "fewest live in its view |",
        "|---:|---|---|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        ratio = f" ({r['rss_mb'] / floor:.2f}x)" if floor else ""
        dt = r.get("window_s") or 1
        dg_calls = round(r.get("by_transport", {}).get("datagram", 0) / dt, 2)
        sw = r.get("swarm", {})
        lines.append(
            f"| {r['members']:,} | {'on' if r.get('datagrams', False) else 'off'} "
            f"| {'yes' if r.get('authority') else 'no'} "
            f"| {r['rss_mb']}{ratio} | {r['fds']} | {r['threads']} "
            f"| {r['cpu_pct']} | {r['wire_kbs']} ({r['payload_kbs']}; {r.get('datagram_kbs', 0)}) "
            f"| {r['calls_per_s']} ({dg_calls}) "
            f"| {r['wire_per_call']} | {r['channels']} | {r['sockets']} "
            f"| {r['live']}/{r['suspect']}/{r['pruned']} | {r['load']:.1f} "
            f"| {sw.get('cpu_pct_window')}, {sw.get('lag_max_window_ms')}, "
            f"{sw.get('live_min_window')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], floor: float | None, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["members"] for r in rows]
    panels = [
        ("rss_mb", "RSS (MB)", floor, "library floor"),
        ("fds", "open descriptors", None, ""),
        ("threads", "threads", None, ""),
        ("cpu_pct", "idle CPU (% of a core)", None, ""),
        ("wire_kbs", "wire KB/s (in + out)", None, ""),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (key, label, base, base_label) in zip(axes, panels, strict=True):
        ax.plot(xs, [r[key] for r in rows], "o-", label="smegd")
        ax.axhline(TARGETS[key], color="red", ls="--", lw=1, label="target")
        if base:
            ax.axhline(base, color="grey", ls=":", lw=1, label=base_label)
        if key == "wire_kbs":
            ax.plot(xs, [r["payload_kbs"] for r in rows], "s--", label="payload only")
        ax.set_xscale("log")
        ax.set_xlabel("members")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle("one smegd in a swarm mesh (idle, product defaults)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,300,1000,3000")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--calibrate-only", action="store_true")
    ap.add_argument(
        "--datagrams",
        choices=("on", "off", "both"),
        default="on",
        help="smegd's (and the swarm's) datagrams key; both: off then on at each size",
    )
    ap.add_argument(
        "--churn-per-min",
        type=float,
        default=0.0,
        help="measure under churn: swarm members crashed a minute (0.2: 20 %%/min)",
    )
    ap.add_argument(
        "--authority",
        choices=("on", "off", "both"),
        default="off",
        help="a founded swarm mesh, as smegctl create makes (records carry admission "
        "chains); both: off then on at each size",
    )
    ap.add_argument(
        "--dissemination",
        choices=("gossip", "tree"),
        default="gossip",
        help="smegd's (and the swarm members') dissemination key (docs/SCALE.md, 15)",
    )
    ap.add_argument(
        "--swarm-dissemination",
        choices=("gossip", "tree"),
        default=None,
        help="the swarm members' dissemination when it is not the smegd's: a mixed mesh "
        "(docs/SCALE.md, 18; default: --dissemination)",
    )
    ap.add_argument(
        "--smegd-seed",
        type=int,
        default=None,
        help="the smegd's identity from this seed (its place in the tree the same every run; "
        "default: a new identity each run)",
    )
    ap.add_argument("--replot", default=None, help="a JSON file of an earlier run")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args(argv)
    # SIGTERM (a timeout) unwinds like Ctrl-C: the swarm and the daemon are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.calibrate_only:
        print(json.dumps(calibrate([]), indent=1))
        return 0
    if a.replot:
        doc = json.loads(Path(a.replot).read_text())
        rows, floor = doc["rows"], doc["floor_mb"]
    else:
        floor = library_floor_mb()
        rows = []
        root = Path(tempfile.mkdtemp(prefix="msb"))
        try:
            pick = {"on": [True], "off": [False], "both": [False, True]}
            modes = [(dg, au) for dg in pick[a.datagrams] for au in pick[a.authority]]
            for size in [int(s) for s in a.sizes.split(",")]:
                for dg, au in modes:
                    print(f"-- {size} members, datagrams {dg}, founded {au} ...", flush=True)
                    try:
                        row = measure(
                            size,
                            a.procs,
                            a.settle,
                            a.window,
                            root,
                            datagrams=dg,
                            churn=a.churn_per_min,
                            authority=au,
                            dissemination=a.dissemination,
                            smegd_seed=a.smegd_seed,
                            swarm_dissemination=a.swarm_dissemination,
                        )
                    except Exception as e:  # a size that could not be measured: said, not fatal
                        print(f"-- {size} members: not measured: {str(e)[:300]}", flush=True)
                        continue
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        cal = calibrate(rows)
        doc = {
            "rows": rows,
            "floor_mb": floor,
            "calibration": cal,
            "machine": {"cpus": os.cpu_count(), "load_end": os.getloadavg()},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        name = "member_scale_churn.json" if a.churn_per_min else "member_scale.json"
        (out / name).write_text(json.dumps(doc, indent=1))
    if not rows:
        print("no size could be measured (above: why)")
        return 1
    print(f"RSS floor of the required libraries: {floor:.1f} MB" if floor else "floor: n/a")
    print(table(rows, floor))
    if print_churn(rows):
        return 0  # the targets and the plot are the idle mesh's
    if "calibration" in doc:
        print(json.dumps(doc["calibration"], indent=1))
    png = out / "member_scale.png"
    if plot(rows, floor, png):
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, DOC_IMG / "member_scale.png")
        print(f"plot: {png} (copied to docs/img/)")
    worst = {k: max(r[k] for r in rows) for k in TARGETS}
    for k, target in TARGETS.items():
        print(f"{k}: max {worst[k]} (target {target}) {'met' if worst[k] <= target else 'MISSED'}")
    if rows and "cpu_pct" in rows[0]:
        print("median idle CPU %:", statistics.median(r["cpu_pct"] for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
