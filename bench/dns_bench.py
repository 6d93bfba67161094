"""Benchmark smegmesh's DNS server with dnsperf, beside nsd when it is installed.

One server process (plain asyncio, one thread) holding a view of N nodes
(default 3,000) across 10 meshes, queried over loopback by dnsperf with a mixed
query file: ALIAS.MESHID (60 %), MESHID.ALIAS (10 %), NODEID.MESHID (10 %),
ALIAS.smeg (5 %), A on a known name = NODATA (5 %), unknown names = NXDOMAIN
(5 %), PTR (5 %); a quarter of the names in upper case.

    uv run python bench/dns_bench.py [--names 3000] [--duration 10]

Cold and warm are reported apart. *Cold*: a freshly started server, one pass
through the query file (dnsperf -n 1): every name asked for the first time is
rendered by dnspython. *Warm*: the same server after such a pass, for
``--duration`` seconds; a run shorter than one pass of the file would never
leave the cold cache. Warm scenarios: saturation (dnsperf's default 100
queries outstanding, and 10), a fixed 10,000 qps load (latency at the target
rate), TCP; then the answer cache disabled (every answer rendered).

When ``nsd`` is installed (Debian package ``nsd``), the same names (a zone
generated from the same nodes, plus the reverse zone) are served by one nsd
process on loopback and measured with the same dnsperf and query file in the
same run; each smegmesh figure is given as a ratio to nsd's. Latency
percentiles come from dnsperf -v (one line per query); server CPU from /proc
(nsd's whole process tree).
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
from typing import Any

import dns.exception
import dns.message
import dns.query

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


QUERIES = 20000


def query_file(names: int, path: Path, count: int = QUERIES) -> None:
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


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (nsd forks its serving process)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                todo.append(child)
    total = 0.0
    for p in tree:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    m = re.search(r"^Model name:\s+(.*)$", out, re.M)
    return m.group(1).strip() if m else "unknown CPU"


def nsd_zones(names: int, directory: Path) -> list[tuple[str, Path]]:
    """Zone files with the records the smegmesh view answers for the query file."""
    soa = "@ 5 IN SOA ns.smeg. hostmaster.smeg. 1 3600 600 86400 5\n@ 5 IN NS ns.smeg.\n"
    fwd = ["$ORIGIN smeg.", soa.rstrip("\n"), "ns 5 IN AAAA ::1"]
    rev = ["$ORIGIN d.f.ip6.arpa.", soa.rstrip("\n")]
    for mesh, alias, key, addr in make_nodes(names):
        nid = hashlib.sha256(key).hexdigest()[:16]
        for owner in (f"{alias}.{mesh}", f"{mesh}.{alias}", f"{nid}.{mesh}", alias):
            fwd.append(f"{owner} 5 IN AAAA {addr}")
        rev.append(f"{addr.reverse_pointer}. 5 IN PTR {alias}.{mesh}.smeg.")
    out = []
    for zone, lines in (("smeg.", fwd), ("d.f.ip6.arpa.", rev)):
        path = directory / f"{zone}zone"
        path.write_text("\n".join(lines) + "\n")
        out.append((zone, path))
    return out


def start_nsd(names: int, directory: Path) -> tuple[subprocess.Popen[str], int]:
    """One nsd (one serving process, like the one-thread smegmesh server) on loopback."""
    port = free_port()
    zones = nsd_zones(names, directory)
    conf = directory / "nsd.conf"
    conf.write_text(
        "server:\n"
        f"  ip-address: 127.0.0.1@{port}\n"
        "  server-count: 1\n"
        '  username: ""\n'
        '  database: ""\n'
        f"  zonelistfile: {directory}/zone.list\n"
        f"  xfrdfile: {directory}/xfrd.state\n"
        f"  pidfile: {directory}/nsd.pid\n"
        f"  xfrdir: {directory}\n"
        "  verbosity: 0\n"
        "  hide-version: yes\n"
        # Response rate limiting (on by default in Debian's nsd, 200 qps per client
        # /24) would drop most of a benchmark's queries: off, as for our server.
        "  rrl-ratelimit: 0\n"
        "  rrl-whitelist-ratelimit: 0\n"
        "remote-control:\n"
        "  control-enable: no\n"
        + "".join(f"zone:\n  name: {zone}\n  zonefile: {path}\n" for zone, path in zones)
    )
    proc = subprocess.Popen(
        ["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    probe = dns.message.make_query("host-0.mesh-0.smeg.", "AAAA")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise RuntimeError(f"nsd exited: {proc.stderr.read()[-2000:]}")
        try:
            if dns.query.udp(probe, "127.0.0.1", port=port, timeout=0.5).answer:
                return proc, port
        except (OSError, dns.exception.Timeout):
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("nsd did not answer within 30 s")


@dataclass
class Result:
    server: str
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
    scenario: str,
    port: int,
    qfile: Path,
    duration: float | None,
    server_pid: int,
    extra: list[str],
    server: str = "smegmesh",
) -> Result:
    """One dnsperf run: ``duration`` seconds, or one pass of the file (None)."""
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-v", *extra]
    cmd += ["-n", "1"] if duration is None else ["-l", str(duration)]
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
        server=server,
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


WARM: list[tuple[str, list[str]]] = [
    ("UDP, saturation, 100 outstanding", []),
    ("UDP, saturation, 10 outstanding", ["-q", "10"]),
    ("UDP, fixed 10,000 qps", ["-Q", "10000"]),
    ("UDP + EDNS, fixed 10,000 qps", ["-Q", "10000", "-e"]),
    ("TCP, saturation, 10 connections", ["-m", "tcp", "-c", "10"]),
]
COLD = ("cold: first pass of the query file, 10 outstanding", ["-q", "10"])
NO_CACHE = ("UDP, no answer cache (dnspython render)", [])


def measure(
    server: str,
    start: Any,
    qfile: Path,
    duration: float,
    repeat: int,
    only: str | None,
    scenarios: list[tuple[str, list[str]]],
    cold: bool,
) -> list[Result]:
    """Cold pass on a fresh server, then each warm scenario after a warm-up pass."""
    results = []
    todo = ([COLD] if cold else []) + scenarios
    for name, extra in todo:
        if only and only.lower() not in name.lower():
            continue
        runs = []
        for _ in range(max(1, repeat)):
            proc, port = start()
            try:
                if name == COLD[0]:
                    runs.append(run_dnsperf(name, port, qfile, None, proc.pid, extra, server))
                else:
                    run_dnsperf("warm-up", port, qfile, None, proc.pid, ["-q", "10"], server)
                    runs.append(run_dnsperf(name, port, qfile, duration, proc.pid, extra, server))
            finally:
                proc.terminate()
                proc.wait(10)
        results.append(min(runs, key=lambda r: r.p99_ms))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=3000)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per warm scenario")
    ap.add_argument("--only", help="run only scenarios whose name contains this text")
    ap.add_argument("--no-nsd", action="store_true", help="skip nsd even if installed")
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
    with_nsd = not args.no_nsd and shutil.which("nsd") is not None

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "queries.txt"
        query_file(args.names, qfile)
        common = (qfile, args.duration, args.repeat, args.only)
        results += measure(
            "smegmesh", lambda: start_server(args.names, 65536), *common, WARM, cold=True
        )
        results += measure(
            "smegmesh", lambda: start_server(args.names, 1), *common, [NO_CACHE], cold=False
        )
        if with_nsd:
            nsd_dir = Path(tmp) / "nsd"
            nsd_dir.mkdir()
            results += measure(
                "nsd", lambda: start_nsd(args.names, nsd_dir), *common, WARM, cold=True
            )

    nsd_version = ""
    if with_nsd:
        v = subprocess.run(["nsd", "-v"], capture_output=True, text=True)
        text = (v.stdout + v.stderr).strip()
        nsd_version = text.splitlines()[0] if text else "nsd"
    print()
    print(
        f"smegmesh DNS: {args.names} nodes in {MESHES} meshes; one Python "
        f"{sys.version.split()[0]} asyncio process (single thread)"
        + (f"; {nsd_version}, one serving process (server-count 1)" if with_nsd else "")
    )
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} CPU cores shared with dnsperf; "
        f"warm scenarios {args.duration:g} s each after one warm-up pass; cold = one pass "
        f"of the {QUERIES:,}-query file on a fresh server"
        + (f"; best of {args.repeat} by p99" if args.repeat > 1 else "")
    )
    nsd_by = {r.scenario: r for r in results if r.server == "nsd"}
    head = (
        f"{'server':8} {'scenario':52} {'qps':>9} {'lost':>5} {'avg ms':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'p99.9':>7} {'max ms':>7} {'srv CPU':>7}"
        + (f" {'qps/nsd':>7} {'p99/nsd':>7}" if with_nsd else "")
    )
    print(head)
    print("-" * len(head))
    for r in results:
        line = (
            f"{r.server:8} {r.scenario:52} {r.qps:9.0f} {r.lost:5d} {r.avg_ms:7.3f} "
            f"{r.p50_ms:7.3f} {r.p99_ms:7.3f} {r.p999_ms:7.3f} {r.max_ms:7.2f} "
            f"{r.server_cpu:6.0f}%"
        )
        base = nsd_by.get(r.scenario)
        if base is not None and r.server != "nsd" and base.qps > 0 and base.p99_ms > 0:
            line += f" {r.qps / base.qps:6.2f}x {r.p99_ms / base.p99_ms:6.2f}x"
        print(line)
    print()
    for server in ("smegmesh", "nsd"):
        first = next((r for r in results if r.server == server and r.rcodes), None)
        if first is not None:
            print(f"response codes ({server}, {first.scenario}):", first.rcodes)
    print(f"load average after the run: {os.getloadavg()[0]:.2f} (other processes compete)")


if __name__ == "__main__":
    main()
