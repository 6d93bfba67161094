"""Per-call wire overhead of the real transport, for the simulator's byte figures (issue 14).

    uv run python bench/wire_overhead_bench.py [--members 3] [--seconds 30]

A few ``smegd`` on loopback (memory backend, product timings) form a mesh and
run for ``--seconds`` with a change every 2 s (so pushes, digests, pulls and
probes all flow). Over the window, with warm channels (no new connection):

* **payload**: the message bodies (msgpack), from each daemon's Prometheus
  counters ``smegd_rpc_bytes`` (every body is counted by its sender and its
  receiver, so the sum over the daemons is halved);
* **calls**: ``smegd_rpc_sent`` summed over the daemons (one per
  request/reply pair), by message type;
* **stream bytes**: what the kernel carried on the daemons' TCP connections
  (``ss -tin``: ``bytes_acked`` of every socket with a daemon's control port
  at either end; on loopback each byte sent is counted once, by its sender).

``(stream - payload) / calls`` is the overhead of one call (request and
reply together): TLS records, HTTP/2 frames and HPACK headers, gRPC framing
and the per-call authentication metadata. TCP/IP headers are below the
socket: with one segment each way and a pure ACK, about 3 x 72 bytes (IPv6
40 + TCP with timestamps 32) per call, given separately.
``smegmesh.sim.overhead`` (``REQUEST_OVERHEAD_BYTES``, ``REPLY_OVERHEAD_BYTES``)
holds the figures the simulator charges.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TCPIP_PER_SEGMENT = 72
_METRIC = re.compile(r"^(smegd_rpc_(?:sent|bytes)_total)\{([^}]*)\} (\S+)$")


def scrape(port: int) -> dict[str, dict[str, float]]:
    import httpx

    out: dict[str, dict[str, float]] = {"sent": {}, "bytes": {}}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        kind = "sent" if m.group(1).endswith("sent_total") else "bytes"
        t = labels["type"]
        out[kind][t] = out[kind].get(t, 0.0) + float(m.group(3))
    return out


def stream_bytes(ports: list[int]) -> int:
    flt = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    proc = subprocess.run(["ss", "-tinH", f"( {flt} )"], capture_output=True, text=True, check=True)
    return sum(int(x) for x in re.findall(r"bytes_acked:(\d+)", proc.stdout))


def main(argv: list[str] | None = None) -> int:
    from smegmesh.testbed.loopback import cluster, create_mesh, free_port

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    timings = {"syncInterval": 1, "pullInterval": 3, "heartbeatInterval": 2, "timeout": 5}
    with cluster(0) as c:
        mports = []
        for _ in range(args.members):
            mp = free_port("127.0.0.1")
            mports.append(mp)
            c.add(1, wait=False, extra={**timings, "metricsListen": f"127.0.0.1:{mp}"})
        [d.wait_ready(240) for d in c.daemons]
        mesh_id = create_mesh(c.daemons[0], c.daemons[1:])
        time.sleep(10)  # deliberate: every member has called every other (channels warm)
        ports = [d.grpc_port for d in c.daemons]
        m0 = [scrape(mp) for mp in mports]
        s0 = stream_bytes(ports)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < args.seconds:
            d = c.daemons[k % len(c.daemons)]
            d.api("PUT", f"/v1/meshes/{mesh_id}/alias", json={"alias": f"w{k}"})
            k += 1
            time.sleep(2)  # deliberate: one change every 2 s
        s1 = stream_bytes(ports)
        m1 = [scrape(mp) for mp in mports]
    calls: dict[str, float] = {}
    payload = 0.0
    for a, b in zip(m0, m1, strict=True):
        for t, v in b["sent"].items():
            calls[t] = calls.get(t, 0.0) + v - a["sent"].get(t, 0.0)
        payload += sum(b["bytes"].values()) - sum(a["bytes"].values())
    payload /= 2
    n_calls = sum(calls.values())
    stream = s1 - s0
    per_call = (stream - payload) / n_calls if n_calls else float("nan")
    print(f"{args.members} smegd, {args.seconds:.0f} s, {k} changes")
    print("calls by type: " + ", ".join(f"{t} {v:.0f}" for t, v in sorted(calls.items())))
    print(f"payload {payload:,.0f} B, stream {stream:,} B, calls {n_calls:.0f}")
    print(f"payload per call {payload / n_calls:.0f} B (request + reply)")
    print(f"overhead per call (TLS, HTTP/2, gRPC, auth metadata): {per_call:.0f} B")
    print(f"plus TCP/IP headers, ~3 segments per call: {3 * TCPIP_PER_SEGMENT} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
