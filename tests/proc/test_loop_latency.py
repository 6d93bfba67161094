"""A heavy ``get-mesh`` does not stall the daemon (issue 12, finding 2).

20 records of 512 routes through 16 meshes each (the largest record), and the
10,240 routes this node uses through them: building the view took 20 s on the
event loop (route alternatives were quadratic) and a DNS query during it timed
out. Here a real :class:`Daemon` (memory backend, in this process) serves
``GET /v1/meshes/{id}`` on its unix socket while a ticker measures how late the
event loop runs and DNS queries are sent to the daemon's DNS server.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from smegmesh.core.cert import Cert
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.record import MAX_ROUTE_PATH, MAX_ROUTES, NodeRecord, Role, RouteAdv
from smegmesh.daemon.config import MeshOptions, parse_config
from smegmesh.daemon.node import Daemon
from smegmesh.daemon.runtime import now_ms
from smegmesh.testbed.loopback import free_port, free_udp_tcp_port, short_tmpdir

pytestmark = pytest.mark.timeout(300)

FAT = 20
#: Longest stall of the event loop tolerated here. The target is 50 ms; the test
#: machines are shared and loaded (load average 15 on 2 cores stalls any process for
#: a few hundred ms), so the bound here only separates "never blocks" from the
#: seconds the view used to hold the loop. The figures are printed (pytest -s).
MAX_STALL_S = 1.0


#: Meshes crossed by each fat route: as many as keep 512 routes within the largest
#: legal record (MAX_RECORD_BYTES).
FAT_PATH = MAX_ROUTE_PATH // 2


def fat_records(mesh_id: str, admitter: NodeIdentity, n: int = FAT) -> list[NodeRecord]:
    """``n`` admitted members, each with the largest legal record (512 long routes)."""
    far = tuple(f"far-mesh-{i:02d}-abcd" for i in range(FAT_PATH))
    now = now_ms()
    out = []
    for i in range(n):
        ident = NodeIdentity.from_seed(bytes([i + 1]) * 32)
        advs = tuple(
            RouteAdv(str(ipaddress.IPv6Network(f"fd99:{j:x}::/64")), far) for j in range(MAX_ROUTES)
        )
        cert = Cert.create(
            admitter, mesh_id, subject=ident.wg_public_key, may_admit=True, now_ms=now
        )
        out.append(
            NodeRecord.create(
                ident,
                mesh_id,
                chain=(cert,),
                version=now,
                now_ms=now,
                role=Role.PEER,
                alias=f"fat{i}",
                wg_endpoint=f"198.51.100.{i + 1}:51820",
                control_endpoint=f"198.51.100.{i + 1}:4000",
                routes=advs,
            )
        )
    return out


CLIENT = """
import httpx, pathlib
t = httpx.HTTPTransport(uds={sock!r})
with httpx.Client(transport=t, base_url="http://smegd", timeout=240) as c:
    r = c.get({url!r})
    r.raise_for_status()
    pathlib.Path({out!r}).write_bytes(r.content)
"""


async def _scenario(tmp: Path) -> dict[str, float]:
    dns_port = free_udp_tcp_port("127.0.0.1")
    cfg = parse_config(
        {
            "stubWg": True,
            "stateDir": str(tmp / "state"),
            "controlSocket": str(tmp / "s.sock"),
            "gRPCPort": free_port(),
            "bindAddress": "::1",
            "dnsListen": f"127.0.0.1:{dns_port}",
            "logLevel": "warning",
            # the fat members are made up: keep the failure detector from pruning them
            "heartbeatInterval": 600,
            "baseConfiguration": {"publicEndpoint": "::1"},
        }
    )
    d = Daemon(cfg)
    await d.start()
    try:
        mesh_id = await d.new_mesh(MeshOptions())
        rt = d.meshes[mesh_id]
        records = fat_records(mesh_id, d.identity)
        changed, errors = rt.node.mesh.apply_many(records, now_ms())
        assert not errors and len(changed) == FAT
        uses = [(a.prefix, mesh_id, r.wg_key, len(a.path)) for r in records for a in r.routes]
        d._route_uses = lambda mid: uses if mid == mesh_id else []  # type: ignore[method-assign]
        d._save_mesh(rt)  # persisted now, not by the persist loop during the measurement

        stalls: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                stalls.append(now - last - 0.005)
                last = now

        tick = asyncio.create_task(ticker())
        dns_rtts: list[float] = []

        # the client in another process: it is not part of the daemon
        out = tmp / "mesh.json"
        client = CLIENT.format(sock=str(tmp / "s.sock"), url=f"/v1/meshes/{mesh_id}", out=str(out))
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", client)
        get = asyncio.create_task(proc.wait())
        q = dns.message.make_query(f"fat1.{mesh_id}.smeg.", "AAAA")
        while not get.done():
            s = time.monotonic()
            await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=5)
            dns_rtts.append(time.monotonic() - s)
            await asyncio.sleep(0.02)
        assert await get == 0
        took = time.monotonic() - t0
        done.set()
        await tick
        raw = out.read_bytes()
        body = json.loads(raw)
        assert len(body["nodes"]) == FAT + 1 and len(body["routes"]) == FAT * MAX_ROUTES
        return {
            "get_mesh_s": took,
            "bytes": len(raw),
            "max_stall_s": max(stalls),
            "p99_stall_s": sorted(stalls)[int(len(stalls) * 0.99)],
            "dns_queries": len(dns_rtts),
            "max_dns_s": max(dns_rtts) if dns_rtts else 0.0,
        }
    finally:
        await d.stop()


def test_heavy_get_mesh_leaves_the_loop_free() -> None:
    tmp = short_tmpdir()
    m = asyncio.run(_scenario(tmp))
    print(
        f"get-mesh {m['get_mesh_s']:.2f} s ({m['bytes'] / 1e6:.1f} MB), loop stall max "
        f"{m['max_stall_s'] * 1000:.0f} ms (p99 {m['p99_stall_s'] * 1000:.0f} ms), "
        f"{m['dns_queries']:.0f} DNS queries, "
        f"slowest {m['max_dns_s'] * 1000:.0f} ms"
    )
    assert m["dns_queries"] >= 1
    assert m["max_dns_s"] < 2 * MAX_STALL_S, m
    assert m["max_stall_s"] < MAX_STALL_S, m
