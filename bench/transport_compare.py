"""Three node-to-node transport designs on one harness: gRPC (the product), framed TLS
streams, and datagrams (the product's path for small calls).

    uv run python bench/transport_compare.py [--calls 500] [--body 100]

Both designs carry the same authentication (docs/TRANSPORT.md): a pinned P-256
TLS server certificate, a per-call Ed25519 signature over
``domain | server fingerprint | timestamp | SHA-256(body)`` checked with the
key binding, the clock window and the length *before* the body is read.

* **A: gRPC** (``daemon/transport.py``, as smegd runs it): HTTP/2 over TLS,
  the authentication as hex metadata; a new channel first fetches the
  certificate on a separate TLS connection (gRPC cannot pin by fingerprint).
* **B: framed TLS stream** (a prototype in this file, stdlib ``asyncio`` +
  ``ssl``): one TLS connection, the fingerprint checked on it right after the
  handshake, then per call ``u32 length | 232-byte binary header | body``
  (the header: request id, caller keys, timestamp, body hash and length,
  callee, signature), replies ``u32 length | request id | status | body``.
* **C: datagrams** (``daemon/rpc_dgram.py``, as smegd runs it for small
  idempotent calls): one UDP datagram each way, sealed with ChaCha20-Poly1305
  under a key from the two nodes' static X25519 keys (``daemon/dgram_wire.py``);
  the call is a ``Ping`` answered by an ``Ack`` (only those types go by datagram).

Measured in one process (client and server), sequential calls:
wire bytes per call (``TCP_INFO`` of both ends, TCP payload: TLS included;
for C the UDP payload counted by the adapter), the IP headers on top
(TCP: 52 bytes per segment, IPv4 with timestamps; UDP: 28 per datagram),
bytes of a new connection (handshakes + first call), CPU per call
(``process_time``, both ends), threads, and the RSS each design adds
(imports + one server + one client connection, measured in a fresh
interpreter per design).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from smegmesh.core.identity import NodeIdentity, verify_signature, x25519_matches_ed25519
from smegmesh.daemon.transport import (
    CLOCK_SKEW_MS,
    MAX_MESSAGE,
    TLS_NAME,
    TlsIdentity,
    _signed_digest,
)
from smegmesh.daemon.wirestats import WireStats

_HDR = struct.Struct(">Q32s32sQ32sI32s64s")  # id, wg key, sign key, ts, hash, len, to, sig
_REP = struct.Struct(">IQB")  # length, id, status


class StreamServer:
    """Design B's server: authenticate the header, then read the body (limits before work)."""

    def __init__(self, tls: TlsIdentity) -> None:
        self.tls = tls
        self.fp = tls.fingerprint
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "k").write_bytes(self.tls.key_pem)
            (Path(d) / "c").write_bytes(self.tls.cert_pem)
            ctx.load_cert_chain(Path(d) / "c", Path(d) / "k")
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, ssl=ctx)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = struct.unpack(">I", await r.readexactly(4))[0]
                if n < _HDR.size or n > _HDR.size + MAX_MESSAGE:
                    return
                rid, wg, sk, ts, digest, length, _to, sig = _HDR.unpack(
                    await r.readexactly(_HDR.size)
                )
                ok = (
                    length == n - _HDR.size
                    and abs(time.time() * 1000 - ts) <= CLOCK_SKEW_MS
                    and x25519_matches_ed25519(wg, sk)
                    and verify_signature(sk, _signed_digest(self.fp, ts, digest), sig)
                )
                if not ok:
                    return  # refused before the body is read
                body = await r.readexactly(length)
                if hashlib.sha256(body).digest() != digest:
                    return
                reply = body  # echo
                w.write(_REP.pack(len(reply) + 9, rid, 0) + reply)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass  # server closing
        finally:
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class StreamClient:
    """Design B's client: one pinned connection, calls framed on it (sequential here)."""

    def __init__(self, identity: NodeIdentity) -> None:
        self.identity = identity
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None
        self.next_id = 0

    async def connect(self, port: int, fp: bytes) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # pinned by fingerprint right below
        self.r, self.w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=TLS_NAME
        )
        der = self.w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if hashlib.sha256(der).digest() != fp:
            raise ssl.SSLError("not the pinned certificate")

    async def call(self, fp: bytes, body: bytes, to: bytes) -> bytes:
        assert self.r is not None and self.w is not None
        self.next_id += 1
        ts = int(time.time() * 1000)
        digest = hashlib.sha256(body).digest()
        sig = self.identity.sign(_signed_digest(fp, ts, digest))
        ident = self.identity
        hdr = _HDR.pack(
            self.next_id,
            ident.wg_public_key,
            ident.sign_public_key,
            ts,
            digest,
            len(body),
            to,
            sig,
        )
        self.w.write(struct.pack(">I", len(hdr) + len(body)) + hdr + body)
        n, _rid, _status = _REP.unpack(await self.r.readexactly(_REP.size))
        return await self.r.readexactly(n - 9)

    async def close(self) -> None:
        if self.w is not None:
            self.w.close()


def _unmetered(server: Any) -> None:
    """Lift the server's member budget (100 calls a second, 1,000 at once):
    a benchmark makes its calls back to back from one member."""
    from smegmesh.daemon.member_budget import MemberBudget

    server.budget = MemberBudget(1e12, 1e12, call_rate=1e12, call_burst=1e12)


async def _design_a(calls: int, body: bytes) -> dict[str, Any]:
    from smegmesh.daemon.transport import RpcClient, RpcServer

    async def echo(_src: bytes, b: bytes) -> bytes:
        return b

    server = RpcServer(TlsIdentity.generate(), echo)
    _unmetered(server)
    port = await server.start("127.0.0.1", 0)
    fp = server._fp
    client = RpcClient(NodeIdentity.generate(os.urandom))
    ep = f"127.0.0.1:{port}"
    return await _measure(
        lambda: client.call(ep, fp, body, to=bytes(32)),
        calls,
        body,
        lambda: client.close(),
        lambda: server.stop(0),
    )


async def _design_b(calls: int, body: bytes) -> dict[str, Any]:
    server = StreamServer(TlsIdentity.generate())
    port = await server.start()
    client = StreamClient(NodeIdentity.generate(os.urandom))
    connected = False

    async def call() -> bytes:
        nonlocal connected
        if not connected:
            await client.connect(port, server.fp)
            connected = True
        return await client.call(server.fp, body, bytes(32))

    return await _measure(call, calls, body, client.close, server.stop)


async def _design_c(calls: int, _body: bytes) -> dict[str, Any]:
    from smegmesh.core.messages import Ack, Ping
    from smegmesh.core.wire import encode
    from smegmesh.daemon import dgram_wire as dw
    from smegmesh.daemon.rpc_dgram import DatagramStats, KeyIds
    from smegmesh.daemon.rpc_dgram_client import DatagramClient
    from smegmesh.daemon.transport import RpcClient, RpcServer

    mesh = "m" * 40
    body, reply = encode(Ping(mesh, 2**40)), encode(Ack(mesh, 2**40))
    me, them = NodeIdentity.generate(os.urandom), NodeIdentity.generate(os.urandom)

    async def answer(_src: bytes, _b: bytes) -> bytes:
        return reply

    stats = DatagramStats()  # both ends' datagrams: count what each sends
    ids = KeyIds(
        [(them.wg_public_key, them.wg_private_key)],
        {dw.key_id(me.wg_public_key): me.wg_public_key}.get,
    )
    server = RpcServer(TlsIdentity.generate(), answer, datagram_keys=ids, datagram_stats=stats)
    # Back-to-back calls from one member and one address: past its call budget
    # and the per-address token bucket (100 a second), which would drop them.
    _unmetered(server)
    port = await server.start("127.0.0.1", 0)
    assert server.datagrams is not None
    server.datagrams.set_address_budget(1e9, 1e9)
    client = RpcClient(me, datagrams=DatagramClient(stats))
    ep = f"127.0.0.1:{port}"

    def sent() -> tuple[int, int]:
        out = [(n, stats.datagrams["out", k]) for (d, k), n in stats.bytes.items() if d == "out"]
        return sum(n for n, _ in out), sum(c for _, c in out)

    async def call() -> bytes:
        got = await client.call(ep, server._fp, body, to=them.wg_public_key)
        assert got == reply and client.transport_calls["out", "Ping", "stream"] == 0
        return got

    return await _measure(
        call, calls, body, client.close, lambda: server.stop(0), reply=reply, udp=sent
    )


async def _measure(
    call: Any,
    calls: int,
    body: bytes,
    close: Any,
    stop: Any,
    *,
    reply: bytes | None = None,
    udp: Any = None,
) -> dict[str, Any]:
    """Per-call figures; ``udp()``: (bytes incl. IP/UDP headers, datagrams) sent so far."""
    reply = body if reply is None else reply
    wire = WireStats()

    def sample() -> tuple[int, int]:
        if udp is not None:
            n, count = udp()
            return n - 28 * count, 28 * count  # UDP payload, IPv4 + UDP headers
        t = wire.sample()
        return t.tx, 52 * t.segs_out  # TCP payload, IPv4 + TCP headers (timestamps)

    b0 = sample()[0]
    assert await call() == reply
    await asyncio.sleep(0.2)
    first = sample()[0] - b0
    await call()
    await asyncio.sleep(0.1)
    b0, h0 = sample()
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    await asyncio.sleep(0.2)
    b1, h1 = sample()
    per_call = (b1 - b0) / calls
    res = {
        "new_connection_bytes": first,
        "wire_per_call": round(per_call),
        "overhead_per_call": round(per_call - len(body) - len(reply)),
        "ip_headers_per_call": round((h1 - h0) / calls),
        "cpu_us_per_call": round(cpu / calls * 1e6),
        "wall_us_per_call": round(wall / calls * 1e6),
        "threads": threading.active_count(),
        "os_threads": len(list(Path("/proc/self/task").iterdir())),
    }
    await close()
    await stop()
    return res


_RSS_SCRIPT = """
import asyncio, ctypes, gc, json, sys
sys.path.insert(0, {bench!r})
import transport_compare as tc
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
base = rss()
res = asyncio.run(getattr(tc, sys.argv[1])(50, b"x" * 100))
gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
print(json.dumps({{"rss_mb": round(rss(), 1), "rss_before_mb": round(base, 1)}}))
"""


def rss_of(design: str) -> dict[str, float]:
    """RSS of a fresh interpreter after one server, one client and 50 calls of ``design``."""
    script = _RSS_SCRIPT.format(bench=str(Path(__file__).resolve().parent))
    p = subprocess.run(
        [sys.executable, "-c", script, design], capture_output=True, text=True, timeout=120
    )
    try:
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": p.stderr[-300:]}  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--body", type=int, default=100)
    a = ap.parse_args(argv)
    body = b"x" * a.body
    out = {}
    designs = (
        ("A: gRPC", "_design_a"),
        ("B: framed TLS stream", "_design_b"),
        ("C: datagrams", "_design_c"),
    )
    for name, fn in designs:
        res = asyncio.run(globals()[fn](a.calls, body))
        res.update(rss_of(fn))
        out[name] = res
    # each design against gRPC, all measured in this run (the baseline)
    a_res = out["A: gRPC"]
    for name, short in (("B: framed TLS stream", "B / A"), ("C: datagrams", "C / A")):
        res = out[name]
        out[short] = {
            k: round(res[k] / a_res[k], 2)
            for k, v in a_res.items()
            if isinstance(v, int | float) and v and isinstance(res.get(k), int | float)
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
