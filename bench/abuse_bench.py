"""The attacks of issue 12 against one real daemon while a 5-member mesh keeps working.

    uv run python bench/abuse_bench.py [--duration 15] [--only rpc,dns]

Five ``smegd`` on loopback (``::1``, memory WireGuard backend, the test
harness of ``smegmesh.testbed.loopback``) form one mesh. The *victim* (the first)
also serves the TCP API (with a token) and DNS. After an idle baseline, each
attack runs against the victim alone, from its own process, bounded in time
(``--duration``) and in count, and only towards loopback:

* ``rpc-big``: concurrent control-port calls (TLS, the node RPC method) with
  large bodies and a bad signature (never authenticated);
* ``api-big``: 200 MiB request bodies to the TCP API without a token;
* ``jmespath``: pathological JMESPath queries through the TCP API (with the token);
* ``dns-tcp``: 256 TCP connections to the DNS port, each sending one query
  every 7 s, while a new client's TCP query is timed;
* ``garbage``: random bytes, a truncated TLS hello and an HTTP/2 preface
  without TLS on the control port, many connections;
* ``member-forged``: a *member* turned bad (it uses the identity of one of the
  other four): pushes of ~1 MiB of forged newer versions of the members'
  records, 8 calls at a time (nineteenth session: each forgery cost a
  signature check, and forged copies of a few records quadratic time).

The victim is restarted (and re-synced) before each attack, so what one
attack leaves behind is not charged to the next (``--no-restart``: back to
back). Measured on the victim: peak RSS (``VmHWM``, reset before each phase), RSS
and open fds after the phase, and change propagation (a ``put-alias`` on
another member until the victim's API shows it), idle and during each
attack. Targets: peak RSS ≤ 2 x idle, propagation ≤ 2 x idle, nothing
lost (every member sees all five at the end), and no 5xx answer. The table is printed and a plot
of the victim's RSS over time, with the attacks shaded, goes to
``bench/out/abuse_bench.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

MIB = 1024 * 1024
ATTACKS = [
    "rpc-big",
    "api-big",
    "jmespath",
    "dns-tcp",
    "garbage",
    "member-forged",
    "member-calls",
]


# ----------------------------------------------------------------------------- attacks
# Each runs in its own process (``--attack NAME``), so its CPU and memory are not
# the measuring process's; it prints one JSON line of counters at the end.


async def attack_rpc_big(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """Large bodies with a bad signature, ``concurrency`` at a time, for ``duration``.

    (Bounded by ``max_calls`` too. Refused calls end at once, so the attack keeps
    going for the whole phase: propagation is measured while it lasts.)"""
    import grpc

    from smegmesh.daemon.transport import FULL_METHOD, TLS_NAME, fetch_certificate

    host, port = t["grpc_host"], t["grpc_port"]
    size, concurrency, max_calls = 32 * MIB, 10, 20_000
    der = await fetch_certificate(host, port, 5.0)
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    opts = [
        ("grpc.max_send_message_length", 64 * MIB),
        ("grpc.max_receive_message_length", 64 * MIB),
        ("grpc.ssl_target_name_override", TLS_NAME),
    ]
    body = os.urandom(size)
    out = {"calls": 0, "rejected": 0, "other": {}}
    deadline = time.monotonic() + duration
    channels = [
        grpc.aio.secure_channel(f"[{host}]:{port}", grpc.ssl_channel_credentials(pem), options=opts)
        for _ in range(concurrency)
    ]

    async def worker(ch: Any) -> None:
        call = ch.unary_unary(FULL_METHOD)
        while time.monotonic() < deadline and out["calls"] < max_calls:
            out["calls"] += 1
            md = (
                ("x-smeg-key", os.urandom(32).hex()),
                ("x-smeg-sign", os.urandom(32).hex()),
                ("x-smeg-ts", str(int(time.time() * 1000))),
                ("x-smeg-sig", os.urandom(64).hex()),
            )
            try:
                await call(body, metadata=md, timeout=max(1.0, deadline - time.monotonic()))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    out["rejected"] += 1
                else:
                    out["other"][e.code().name] = out["other"].get(e.code().name, 0) + 1

    try:
        await asyncio.gather(*(worker(ch) for ch in channels))
    finally:
        for ch in channels:
            await ch.close()
    out["body_mib"] = size // MIB
    out["concurrency"] = concurrency
    return out


async def attack_api_big(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """200 MiB bodies (no token), two at a time, for ``duration`` (at most 100,000).

    Refused within ~1 MiB each, 2,000 of them took under 3 s: the attack had
    ended before the first change was measured (the row read "no").
    """
    host, port = t["api_host"], t["api_port"]
    size, concurrency, max_requests = 200 * MIB, 2, 100_000
    chunk = os.urandom(MIB)
    out: dict[str, Any] = {"requests": 0, "statuses": {}, "sent_mib": 0}
    deadline = time.monotonic() + duration

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"POST /v1/meshes HTTP/1.1\r\nHost: smegd\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n".encode()
            )
            sent = 0
            while sent < size and time.monotonic() < deadline:
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), max(0.1, deadline - time.monotonic()))
                except (TimeoutError, ConnectionError):
                    break
                sent += len(chunk)
            out["sent_mib"] += sent // MIB
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
                status = line.split()[1].decode() if len(line.split()) > 1 else "closed"
            except (TimeoutError, ConnectionError):
                status = "no answer"
            out["statuses"][status] = out["statuses"].get(status, 0) + 1
        except ConnectionError as e:
            out["statuses"][type(e).__name__] = out["statuses"].get(type(e).__name__, 0) + 1
        finally:
            writer.transport.abort()

    async def worker() -> None:
        while time.monotonic() < deadline and out["requests"] < max_requests:
            out["requests"] += 1
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


JMESPATH_QUERIES = [
    "not_null()",
    "nodes[0:-1:0]",
    "[" * 500 + "`1`" + "]" * 500,
    "`" + "[" * 500 + "]" * 500 + "`",
    "nodes[*].[public_key, public_key, public_key][][][]",
    "sort_by(nodes, &public_key)[*].to_string(@)",
    "length(join('', nodes[*].to_string(@)))",
    "nodes[?contains(to_string(@), 'x')] | [*].to_string(@)",
]


async def attack_jmespath(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """The issue's three 500s plus CPU-heavy queries, 4 at a time, for ``duration``
    (at most 20,000)."""
    import httpx

    url = f"http://[{t['api_host']}]:{t['api_port']}/v1/meshes/{t['mesh_id']}/query"
    headers = {"Authorization": f"Bearer {t['api_token']}"}
    out: dict[str, Any] = {"requests": 0, "statuses": {}}
    deadline = time.monotonic() + duration
    async with httpx.AsyncClient(headers=headers, timeout=10) as client:

        async def worker(i: int) -> None:
            while time.monotonic() < deadline and out["requests"] < 20_000:
                q = JMESPATH_QUERIES[(out["requests"] + i) % len(JMESPATH_QUERIES)]
                out["requests"] += 1
                try:
                    r = await client.get(url, params={"q": q})
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                out["statuses"][key] = out["statuses"].get(key, 0) + 1

        await asyncio.gather(*(worker(i) for i in range(4)))
    return out


def _dns_query(qid: int) -> bytes:
    import dns.message

    q = dns.message.make_query("smeg.", "SOA")
    q.id = qid
    wire = q.to_wire()
    return struct.pack("!H", len(wire)) + wire


async def attack_dns_tcp(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """256 connections, a query each every 7 s; a newcomer's query timed every second."""
    host, port = t["dns_host"], t["dns_port"]
    out: dict[str, Any] = {"connections": 0, "newcomer_ok": 0, "newcomer_failed": 0}
    newcomer_ms: list[float] = []
    deadline = time.monotonic() + duration
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def drain(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(4096):
                pass

    drains = []
    for _ in range(256):
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue
        writer.write(_dns_query(1))
        conns.append((reader, writer))
        drains.append(asyncio.ensure_future(drain(reader)))
    out["connections"] = len(conns)

    async def keepalive() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(7)  # the attacker's pace (issue 12 finding 6)
            for _, writer in conns:
                if not writer.is_closing():
                    with contextlib.suppress(Exception):
                        writer.write(_dns_query(2))

    async def newcomers() -> None:
        while time.monotonic() < deadline - 1:
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
                try:
                    writer.write(_dns_query(3))
                    (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
                    await asyncio.wait_for(reader.readexactly(n), 3)
                finally:
                    writer.transport.abort()
                newcomer_ms.append((time.monotonic() - t0) * 1000)
                out["newcomer_ok"] += 1
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                out["newcomer_failed"] += 1
            await asyncio.sleep(1)

    await asyncio.gather(keepalive(), newcomers())
    for _, writer in conns:
        writer.transport.abort()
    for d in drains:
        d.cancel()
    out["newcomer_p50_ms"] = statistics.median(newcomer_ms) if newcomer_ms else None
    return out


async def attack_garbage(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """Random bytes, truncated TLS hellos, cleartext HTTP/2: 50 at a time, at most 2,000."""
    host, port = t["grpc_host"], t["grpc_port"]
    rng = random.Random(12)
    hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(32)
    h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    out: dict[str, Any] = {"connections": 0, "refused": 0}
    deadline = time.monotonic() + duration

    async def worker() -> None:
        while time.monotonic() < deadline and out["connections"] < 2000:
            out["connections"] += 1
            kind = rng.randrange(3)
            payload = [os.urandom(rng.randint(1, 4096)), hello, h2][kind]
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
            except (OSError, TimeoutError):
                out["refused"] += 1
                continue
            try:
                writer.write(payload)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.read(1024), 0.5)
            finally:
                writer.transport.abort()

    await asyncio.gather(*(worker() for _ in range(50)))
    return out


def _member_and_victim(t: dict[str, Any]) -> tuple[Any, Any, list[Any]]:
    """The member turned bad (its identity), the victim's record, and every record it holds."""
    import base64

    import msgpack

    from smegmesh.core.identity import NodeIdentity
    from smegmesh.core.record import NodeRecord
    from smegmesh.core.wire import decode_item

    me = NodeIdentity.from_seed(Path(t["member_seed"]).read_bytes())
    raw = msgpack.unpackb(Path(t["member_state"]).read_bytes(), raw=False)
    recs = [r for r in map(decode_item, raw) if isinstance(r, NodeRecord)]
    victim = next(r for r in recs if r.wg_key == base64.b64decode(t["victim_key"]))
    return me, victim, recs


async def attack_member_forged(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """A member's pushes of ~1 MiB of forged newer record versions, 8 at a time."""
    import dataclasses

    from smegmesh.core.record import NodeRecord
    from smegmesh.core.sync import Push
    from smegmesh.core.wire import encode

    me, victim, recs = _member_and_victim(t)
    assert victim.control_endpoint is not None and victim.tls_fp is not None
    forged: list[NodeRecord] = []
    j = 0
    while len(encode(Push(t["mesh_id"], tuple(forged)))) < 900 * 1024:
        j += 1
        forged += [
            dataclasses.replace(
                r, version=r.version + j, timestamp_ms=r.timestamp_ms + j, signature=bytes(64)
            )
            for r in recs
        ]
    body = encode(Push(t["mesh_id"], tuple(forged)))
    out = await _member_calls(me, victim, lambda _w, _i: body, 8, duration)
    out["items"], out["body_kib"] = len(forged), len(body) // 1024
    return out


async def attack_member_calls(t: dict[str, Any], duration: float) -> dict[str, Any]:
    """A member's small calls (pings) as fast as it can, 16 in flight: its whole slot count."""
    from smegmesh.core.messages import Ping
    from smegmesh.core.wire import encode

    me, victim, _ = _member_and_victim(t)
    mesh_id = t["mesh_id"]
    out = await _member_calls(
        me, victim, lambda w, i: encode(Ping(mesh_id, w * 1_000_000 + i)), 16, duration
    )
    out["calls_per_s"] = round(out["calls"] / duration)
    return out


async def _member_calls(
    me: Any, victim: Any, body: Any, workers: int, duration: float
) -> dict[str, Any]:
    """``workers`` calls in flight from member ``me`` to ``victim`` for ``duration`` seconds.

    ``body(worker, i)``: the bytes of worker's ``i``-th call.
    """
    from smegmesh.daemon.transport import RpcClient

    assert victim.control_endpoint is not None and victim.tls_fp is not None
    out: dict[str, Any] = {"calls": 0, "answered": 0, "other": {}}
    deadline = time.monotonic() + duration
    rpc = RpcClient(me, timeout=30)

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            out["calls"] += 1
            try:
                await rpc.call(victim.control_endpoint, victim.tls_fp, body(w, i), to=victim.wg_key)
                out["answered"] += 1
            except Exception as e:
                out["other"][type(e).__name__] = out["other"].get(type(e).__name__, 0) + 1

    try:
        await asyncio.gather(*(worker(w) for w in range(workers)))
    finally:
        await rpc.close()
    return out


ATTACK_FUNCS = {
    "rpc-big": attack_rpc_big,
    "api-big": attack_api_big,
    "jmespath": attack_jmespath,
    "dns-tcp": attack_dns_tcp,
    "garbage": attack_garbage,
    "member-forged": attack_member_forged,
    "member-calls": attack_member_calls,
}


def run_attack(name: str, target_json: str, duration: float) -> None:
    target = json.loads(target_json)
    for key in ("grpc_host", "api_host", "dns_host"):
        host = target.get(key, "")
        if host and not (host in ("::1", "localhost") or host.startswith("127.")):
            sys.exit(f"refusing to attack {host}: loopback only")
    try:
        result = asyncio.run(asyncio.wait_for(ATTACK_FUNCS[name](target, duration), duration + 30))
    except Exception as e:  # report it: a target that cannot even be reached is a finding
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- measuring


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """The victim's RSS and fds every 100 ms (for the plot and the fd peak)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.monotonic() - self.t0, rss_mb(self.pid), fds(self.pid)))

    def peak_fds(self, t_from: float, t_to: float) -> int:
        return max((f for t, _, f in self.samples if t_from <= t <= t_to), default=0)


@dataclass
class Phase:
    name: str
    rss_start: float = 0.0
    t_from: float = 0.0
    t_to: float = 0.0
    peak_rss: float = 0.0
    rss_after: float = 0.0
    peak_fds: int = 0
    fds_after: int = 0
    propagation_ms: list[float] = field(default_factory=list)
    lost: int = 0
    cpu_pct: float = 0.0  # the victim's CPU over the phase, % of one core
    attack: dict[str, Any] = field(default_factory=dict)

    @property
    def prop_ms(self) -> float | None:
        return statistics.median(self.propagation_ms) if self.propagation_ms else None


class Propagation:
    """put-alias on ``writer``; time until ``victim``'s API shows it (bounded)."""

    def __init__(self, writer: Any, victim: Any, mesh_id: str, timeout: float) -> None:
        self.writer, self.victim, self.mesh_id, self.timeout = writer, victim, mesh_id, timeout
        self.key = writer.self_key(mesh_id)
        self.n = 0

    def once(self) -> float | None:
        self.n += 1
        alias = f"abuse-{os.getpid()}-{self.n}"
        self.writer.api("PUT", f"/v1/meshes/{self.mesh_id}/alias", json={"alias": alias})
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.timeout:
            with contextlib.suppress(Exception):
                node = self.victim.node(self.mesh_id, self.key)
                if node is not None and node.get("alias") == alias:
                    return (time.monotonic() - t0) * 1000
            time.sleep(0.02)
        return None


def measure_phase(
    phase: Phase,
    victim_pid: int,
    sampler: Sampler,
    prop: Propagation,
    attack_cmd: list[str] | None,
    duration: float,
    changes: int,
) -> None:
    reset_peak(victim_pid)
    phase.t_from = time.monotonic() - sampler.t0
    cpu0, wall0 = cpu_s(victim_pid), time.monotonic()
    proc = None
    if attack_cmd is not None:
        proc = subprocess.Popen(attack_cmd, stdout=subprocess.PIPE, text=True)
        time.sleep(min(3.0, duration / 4))  # deliberate: let the attack build up first
    t_end = time.monotonic() + (duration - min(3.0, duration / 4) if proc else duration)
    while len(phase.propagation_ms) + phase.lost < changes or (proc and time.monotonic() < t_end):
        if proc is not None and proc.poll() is not None:
            break
        if len(phase.propagation_ms) + phase.lost >= changes * 3:
            break
        ms = prop.once()
        if ms is None:
            phase.lost += 1
        else:
            phase.propagation_ms.append(ms)
    if proc is not None:
        try:
            stdout, _ = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, _ = proc.communicate()
        with contextlib.suppress(ValueError, IndexError):
            phase.attack = json.loads(stdout.strip().splitlines()[-1])
    phase.t_to = time.monotonic() - sampler.t0
    phase.cpu_pct = 100 * (cpu_s(victim_pid) - cpu0) / max(time.monotonic() - wall0, 1e-3)
    phase.peak_rss = proc_status(victim_pid, "VmHWM") / 1024
    # After: give the daemon a few seconds to return what it took, then read.
    time.sleep(3)  # deliberate: "RSS after" is read a fixed 3 s after the attack
    phase.rss_after = rss_mb(victim_pid)
    phase.fds_after = fds(victim_pid)
    phase.peak_fds = sampler.peak_fds(phase.t_from, phase.t_to)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per attack")
    ap.add_argument("--changes", type=int, default=5, help="propagation samples per phase")
    ap.add_argument("--only", help="comma-separated attacks: " + ",".join(ATTACKS))
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument(
        "--no-restart",
        action="store_true",
        help="run the attacks back to back on one victim (by default it is restarted "
        "before each attack, so each starts from a fresh daemon)",
    )
    ap.add_argument("--attack", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attack:
        run_attack(args.attack, args.target, args.duration)
        return 0
    attacks = [a.strip() for a in args.only.split(",")] if args.only else ATTACKS
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        sys.exit(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")

    from smegmesh.testbed.loopback import (
        API_TOKEN,
        Cluster,
        create_mesh,
        wait_converged,
        wait_until,
    )

    cluster = Cluster()
    phases: list[Phase] = []
    try:
        (victim,) = cluster.add(1, api_listen=True, dns_listen=True)
        others = cluster.add(4)
        mesh_id = create_mesh(victim, others)
        assert victim.proc is not None
        pid = victim.proc.pid
        target = {
            "grpc_host": "::1",
            "grpc_port": victim.grpc_port,
            "api_host": "::1",
            "api_port": victim.api_port,
            "api_token": API_TOKEN,
            "dns_host": victim.dns_host,
            "dns_port": victim.dns_port,
            "mesh_id": mesh_id,
            # member-forged: the attacker is the third other member, turned bad
            "member_seed": str(others[2].dir / "state" / "identity.key"),
            "member_state": str(others[2].dir / "state" / "meshes" / f"{mesh_id}.state"),
            "victim_key": victim.self_key(mesh_id),
        }
        sampler = Sampler(pid)
        sampler.start()
        prop = Propagation(others[1], victim, mesh_id, timeout=max(30.0, args.duration * 2))
        prop.once()  # the first change warms channels and caches
        print(f"5 daemons on ::1, mesh {mesh_id}; victim pid {pid}", flush=True)
        idle = Phase("idle", rss_start=rss_mb(pid))
        measure_phase(idle, pid, sampler, prop, None, args.duration / 2, args.changes)
        phases.append(idle)
        print(f"idle: RSS {idle.rss_after:.0f} MB, prop {idle.prop_ms} ms", flush=True)
        for i, name in enumerate(attacks):
            if i and not args.no_restart:
                # A fresh victim per attack: what one attack leaves behind (memory not
                # returned) is not charged to the next.
                victim.stop()
                victim.restart()
                wait_until(
                    lambda: mesh_id in victim.mesh_ids(), 60, 0.2, "the victim to restore the mesh"
                )
                wait_converged([victim, *others], mesh_id, timeout=60)
                assert victim.proc is not None
                pid = sampler.pid = victim.proc.pid
            cmd = [sys.executable, __file__, "--attack", name, "--target", json.dumps(target)]
            cmd += ["--duration", str(args.duration)]
            ph = Phase(name)
            ph.rss_start = rss_mb(pid)
            measure_phase(ph, pid, sampler, prop, cmd, args.duration, args.changes)
            phases.append(ph)
            print(
                f"{name}: peak RSS {ph.peak_rss:.0f} MB, after {ph.rss_after:.0f} MB, "
                f"prop {ph.prop_ms} ms, lost {ph.lost}; attack {ph.attack}",
                flush=True,
            )
            if not victim.alive:
                print("the victim died", flush=True)
                break
        sampler.stop.set()
        # Nothing lost: every member still sees all five.
        want = {d.self_key(mesh_id) for d in [victim, *others]} if victim.alive else set()
        complete = sum(1 for d in [victim, *others] if d.alive and d.mesh_keys(mesh_id) == want)
    finally:
        cluster.close()

    base = phases[0]
    rows = []
    ok_all = True
    for ph in phases:
        rss_ok = ph.peak_rss <= 2 * base.rss_after
        prop_ok = (
            ph.prop_ms is not None and base.prop_ms is not None and ph.prop_ms <= 2 * base.prop_ms
        )
        errors = sum(
            n for code, n in ph.attack.get("statuses", {}).items() if str(code).startswith("5")
        )
        ok = rss_ok and prop_ok and ph.lost == 0 and errors == 0 and "error" not in ph.attack
        ok_all &= ok or ph is base
        rows.append(
            f"| {ph.name} | {ph.rss_start:.0f} | "
            f"{ph.peak_rss:.0f} ({ratio(ph.peak_rss, base.rss_after)}) | "
            f"{ph.rss_after:.0f} ({ratio(ph.rss_after, base.rss_after)}) | "
            f"{ph.peak_fds} / {ph.fds_after} | "
            f"{'-' if ph.prop_ms is None else f'{ph.prop_ms:.0f}'} "
            f"({ratio(ph.prop_ms, base.prop_ms)}) | {ph.cpu_pct:.0f} | {ph.lost} | {errors} | "
            f"{'-' if ph is base else ('yes' if ok else '**no**')} |"
        )
    table = "\n".join(
        [
            "| phase | RSS at start MB | peak RSS MB (x idle) | RSS after MB (x idle) | "
            "fds peak / after | propagation ms, median (x idle) | victim CPU % | "
            "changes lost | 5xx answers | within targets |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            *rows,
        ]
    )
    print()
    print(
        f"victim: one smegd of a 5-member mesh on ::1 (memory backend); "
        f"{args.duration:g} s per attack"
        + ("" if args.no_restart else ", the victim restarted (and re-synced) before each")
        + "; after = 3 s after the attack; targets: peak RSS ≤ 2 x idle RSS, propagation "
        "≤ 2 x idle, nothing lost, no 5xx answer"
    )
    print(table)
    print(f"members seeing all five at the end: {complete}/5")
    print("attack counters:")
    for ph in phases[1:]:
        print(f"  {ph.name}: {json.dumps(ph.attack)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "abuse_bench.md").write_text(table + "\n")
    plot(sampler, phases, args.out / "abuse_bench.png")
    print(f"plot: {args.out / 'abuse_bench.png'}")
    return 0 if ok_all and complete == 5 else 1


def plot(sampler: Sampler, phases: list[Phase], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ts = [s[0] for s in sampler.samples]
    ax.plot(ts, [s[1] for s in sampler.samples], color="tab:blue", label="victim RSS (MB)")
    base = phases[0].rss_after
    ax.axhline(2 * base, color="tab:red", linestyle="--", linewidth=1, label="2 x idle RSS")
    colors = ["#eeeeee", "#ffe0e0", "#e0ffe0", "#e0e0ff", "#fff0c0", "#f0e0ff"]
    for i, ph in enumerate(phases):
        ax.axvspan(ph.t_from, ph.t_to, color=colors[i % len(colors)], alpha=0.8)
        ax.text(
            (ph.t_from + ph.t_to) / 2,
            0.02,
            ph.name,
            ha="center",
            fontsize=8,
            transform=ax.get_xaxis_transform(),
        )
    top = max([2 * base, *(s[1] for s in sampler.samples)])
    ax.set_ylim(0, top * 1.15)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax2 = ax.twinx()
    for ph in phases:
        if ph.propagation_ms:
            xs = [
                ph.t_from + (ph.t_to - ph.t_from) * (k + 0.5) / len(ph.propagation_ms)
                for k in range(len(ph.propagation_ms))
            ]
            ax2.scatter(xs, ph.propagation_ms, color="tab:orange", s=12)
    ax2.set_ylabel("propagation (ms, dots)")
    ax.set_title("smegd under the attacks of issue 12 (5-member mesh on loopback)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
