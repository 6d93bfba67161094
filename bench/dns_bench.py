"""Benchmark smegmesh's DNS server with dnsperf.

One server process (plain asyncio, one thread) holding a view of N nodes
(default 3,000) across 10 meshes, queried over loopback by dnsperf with a mixed
query file: ALIAS.MESHID (60 %), MESHID.ALIAS (10 %), NODEID.MESHID (10 %),
ALIAS.smeg (5 %), A on a known name = NODATA (5 %), unknown names = NXDOMAIN
(5 %), PTR (5 %); a quarter of the names in upper case.

    uv run python bench/dns_bench.py [--names 3000] [--duration 10]

Scenarios: saturation (dnsperf's default 100 queries outstanding, and 10), a
fixed 10,000 qps load (latency at the target rate), TCP, and the cache
disabled (every answer rendered by dnspython). Latency percentiles come from
dnsperf -v (one line per query). Server CPU is read from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MESHES = 10


def make_nodes(n: int) -> list[tuple[str, str, bytes, ipaddress.IPv6Address]]:
    out = []
    for i in range(n):
        mesh = f"mesh-{i % MESHES}"
        key = hashlib.sha256(f"node-{i}".encode()).digest()
        prefix = hashlib.sha256(mesh.encode()).digest()[:6]
        iid = bytearray(hashlib.sha256(key).digest()[:8])
        iid[0] &= 0xFD
        addr = ipaddress.IPv6Address(b"\xfd" + prefix + b"\x01" + bytes(iid))
        out.append((mesh, f"host-{i}", key, addr))
    return out


def serve(port: int, names: int, cache_size: int) -> None:
    from smegmesh.dns import DnsServer, NameView, NodeName

    view = NameView(NodeName(m, a, k, ad) for m, a, k, ad in make_nodes(names))

    async def main() -> None:
        server = DnsServer(view, cache_size=cache_size)
        await server.start("127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def query_file(names: int, path: Path, count: int = 20000) -> None:
    rng = random.Random(7)
    nodes = make_nodes(names)
    lines = []
    for _ in range(count):
        mesh, alias, key, addr = rng.choice(nodes)
        nid = hashlib.sha256(key).hexdigest()[:16]
        r = rng.random()
        if r < 0.60:
            line = f"{alias}.{mesh}.smeg AAAA"
        elif r < 0.70:
            line = f"{mesh}.{alias}.smeg AAAA"
        elif r < 0.80:
            line = f"{nid}.{mesh}.smeg AAAA"
        elif r < 0.85:
            line = f"{alias}.smeg AAAA"
        elif r < 0.90:
            line = f"{alias}.{mesh}.smeg A"
        elif r < 0.95:
            line = f"nobody-{rng.randrange(names)}.{mesh}.smeg AAAA"
        else:
            line = f"{addr.reverse_pointer} PTR"
        if rng.random() < 0.25:
            line = line.upper()
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    scenario: str
    qps: float
    sent: int
    lost: int
    avg_ms: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    server_cpu: float
    rcodes: str


def run_dnsperf(
    scenario: str, port: int, qfile: Path, duration: float, server_pid: int, extra: list[str]
) -> Result:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile)]
    cmd += ["-l", str(duration), "-v", *extra]
    # -v output goes to a file: reading it through a pipe slows dnsperf down enough
    # to distort the latencies it measures.
    log = qfile.with_suffix(".out")
    cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
    with log.open("w") as sink:
        subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, check=True)
    cpu1, t1 = cpu_seconds(server_pid), time.monotonic()
    out = log.read_text()
    lat = sorted(float(m) for m in re.findall(r"^> \S+ .* (\d+\.\d+)$", out, re.M))

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")

    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    rc = re.search(r"Response codes:\s+(.*)", out)
    return Result(
        scenario=scenario,
        qps=num(r"Queries per second:\s+([\d.]+)"),
        sent=int(num(r"Queries sent:\s+(\d+)")),
        lost=int(num(r"Queries lost:\s+(\d+)")),
        avg_ms=num(r"Average Latency \(s\):\s+([\d.]+)") * 1e3,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        p999_ms=pct(0.999),
        max_ms=lat[-1] * 1e3 if lat else float("nan"),
        server_cpu=100 * (cpu1 - cpu0) / (t1 - t0),
        rcodes=rc.group(1).strip() if rc else "",
    )


def start_server(names: int, cache_size: int) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--names", str(names)]
    cmd += ["--cache-size", str(cache_size)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("server did not start")
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--only", help="run only scenarios whose name contains this text")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each scenario N times and keep the run with the lowest p99 "
        "(filters out noise from other processes on a shared box)",
    )
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cache-size", type=int, default=65536, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve, args.names, args.cache_size)
        return
    if shutil.which("dnsperf") is None:
        sys.exit("dnsperf is not installed (apt-get install dnsperf)")

    scenarios: list[tuple[str, list[str], int]] = [
        ("UDP, saturation, 100 outstanding", [], 65536),
        ("UDP, saturation, 10 outstanding", ["-q", "10"], 65536),
        ("UDP, fixed 10,000 qps", ["-Q", "10000"], 65536),
        ("UDP + EDNS, fixed 10,000 qps", ["-Q", "10000", "-e"], 65536),
        ("TCP, saturation, 10 connections", ["-m", "tcp", "-c", "10"], 65536),
        ("UDP, no answer cache (dnspython render)", [], 1),
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "queries.txt"
        query_file(args.names, qfile)
        for name, extra, cache_size in scenarios:
            if args.only and args.only.lower() not in name.lower():
                continue
            runs = []
            for _ in range(max(1, args.repeat)):
                proc, port = start_server(args.names, cache_size)
                try:
                    runs.append(run_dnsperf(name, port, qfile, args.duration, proc.pid, extra))
                finally:
                    proc.terminate()
                    proc.wait(5)
            results.append(min(runs, key=lambda r: r.p99_ms))

    print()
    print(
        f"smegmesh DNS: {args.names} nodes in {MESHES} meshes; one Python "
        f"{sys.version.split()[0]} asyncio process (single thread); "
        f"{os.cpu_count()} CPU cores shared with dnsperf; {args.duration:g} s per scenario"
        + (f", best of {args.repeat} by p99" if args.repeat > 1 else "")
    )
    head = (
        f"{'scenario':42} {'qps':>9} {'lost':>5} {'avg ms':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p99.9':>7} {'max ms':>7} {'srv CPU':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.scenario:42} {r.qps:9.0f} {r.lost:5d} {r.avg_ms:7.3f} {r.p50_ms:7.3f} "
            f"{r.p99_ms:7.3f} {r.p999_ms:7.3f} {r.max_ms:7.2f} {r.server_cpu:6.0f}%"
        )
    print()
    if results:
        print("response codes (first scenario):", results[0].rcodes)
    print(f"load average after the run: {os.getloadavg()[0]:.2f} (other processes compete)")


if __name__ == "__main__":
    main()
