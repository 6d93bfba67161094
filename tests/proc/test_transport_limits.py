"""Issue 12: the node-to-node transport bounds what a stranger or a member can cost it.

Against real daemons (memory backend) on loopback: memory under a flood of big
unauthenticated calls (finding 1), concurrency caps, and the size of what a
non-member may send.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from smegmesh.core.identity import NodeIdentity
from smegmesh.core.invite import parse_token
from smegmesh.core.messages import JoinReply, JoinRequest
from smegmesh.core.paging import item_size, page, pages
from smegmesh.core.record import (
    MAX_ROUTE_PATH,
    MAX_ROUTES,
    NodeRecord,
    RecordError,
    Role,
    RouteAdv,
)
from smegmesh.core.sync import Push
from smegmesh.core.wire import decode, encode
from smegmesh.daemon import rpc_server, transport
from smegmesh.daemon.ratelog import RateLog
from smegmesh.daemon.transport import (
    FULL_METHOD,
    MAX_CALLS_PER_KEY,
    MAX_MESSAGE,
    MAX_STRANGER_CALLS_PER_ADDRESS,
    MAX_STRANGER_MESSAGE,
    TLS_NAME,
    EndpointBackoff,
    RpcClient,
    RpcError,
    RpcServer,
    TlsIdentity,
    cert_fingerprint,
)
from smegmesh.testbed.loopback import Smegd, cluster, create_mesh, wait_until


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's RSS in a thread; ``peak`` after ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _channel(d: Smegd) -> grpc.aio.Channel:
    cert = (d.dir / "state" / "tls.crt").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=cert)
    return grpc.aio.secure_channel(
        f"[::1]:{d.grpc_port}",
        creds,
        options=[
            ("grpc.ssl_target_name_override", TLS_NAME),
            ("grpc.max_send_message_length", 128 * 1024 * 1024),
        ],
    )


def _bad_md(ident: NodeIdentity, length: int) -> tuple[tuple[str, str], ...]:
    return (
        ("x-smeg-key", ident.wg_public_key.hex()),
        ("x-smeg-sign", ident.sign_public_key.hex()),
        ("x-smeg-ts", str(int(time.time() * 1000))),
        ("x-smeg-hash", os.urandom(32).hex()),
        ("x-smeg-len", str(length)),
        ("x-smeg-sig", os.urandom(64).hex()),
    )


async def _flood(d: Smegd, n: int, size: int) -> list[grpc.StatusCode]:
    body = os.urandom(1024) * (size // 1024)
    ident = NodeIdentity.generate(os.urandom)
    async with _channel(d) as ch:
        call = ch.unary_unary(FULL_METHOD)

        async def one() -> grpc.StatusCode:
            try:
                await call(body, metadata=_bad_md(ident, len(body)), timeout=60)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        return list(await asyncio.gather(*(one() for _ in range(n))))


async def _lying_strangers(d: Smegd, n: int, rounds: int) -> list[grpc.StatusCode]:
    """Validly signed non-members that announce 1 byte and send ``MAX_MESSAGE``."""
    body = os.urandom(1024) * (MAX_MESSAGE // 1024 - 4)
    fp = cert_fingerprint((d.dir / "state" / "tls.crt").read_bytes())
    out: list[grpc.StatusCode] = []
    async with _channel(d) as ch:
        call = ch.unary_unary(FULL_METHOD)

        async def one() -> grpc.StatusCode:
            ident = NodeIdentity.generate(os.urandom)
            ts = int(time.time() * 1000)
            digest = hashlib.sha256(b"x").digest()
            sig = ident.sign(transport._signed_digest(fp, ts, digest))
            md = (
                ("x-smeg-key", ident.wg_public_key.hex()),
                ("x-smeg-sign", ident.sign_public_key.hex()),
                ("x-smeg-ts", str(ts)),
                ("x-smeg-hash", digest.hex()),
                ("x-smeg-len", "1"),
                ("x-smeg-sig", sig.hex()),
            )
            try:
                await call(body, metadata=md, timeout=60)
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        for _ in range(rounds):
            out += await asyncio.gather(*(one() for _ in range(n)))
    return out


def test_flood_of_big_unauthenticated_calls_keeps_memory_bounded() -> None:
    """Finding 1: concurrent 32 MiB calls with a bad signature, RSS must stay < 2x idle."""
    with cluster(1) as c:
        d = c.daemons[0]
        d.api("POST", "/v1/meshes")  # a node with a mesh, as in the field
        assert d.proc is not None
        idle = rss_mb(d.proc.pid)
        with RssSampler(d.proc.pid) as s:
            codes = asyncio.run(_flood(d, 12, 32 * 1024 * 1024))
        after = rss_mb(d.proc.pid)
        print(f"idle {idle:.0f} MB, peak {s.peak:.0f} MB, after {after:.0f} MB")
        assert grpc.StatusCode.OK not in codes, codes
        assert s.peak < 2 * idle, (idle, s.peak, after)
        assert after < 1.5 * idle, (idle, s.peak, after)
        # Strangers with valid signatures that lie about their body's size.
        with RssSampler(d.proc.pid) as s:
            codes = asyncio.run(_lying_strangers(d, 25, 4))
        after = rss_mb(d.proc.pid)
        print(f"lying strangers: idle {idle:.0f} MB, peak {s.peak:.0f} MB, after {after:.0f} MB")
        assert grpc.StatusCode.OK not in codes, codes
        assert s.peak < 2 * idle, (idle, s.peak, after)
        # Still serves its API and its mesh traffic.
        assert d.api("GET", "/v1/meshes")


# ---------------------------------------------------------------- in-process server


async def _serve(handler, is_member=None):  # type: ignore[no-untyped-def]
    tls = TlsIdentity.generate()
    server = RpcServer(tls, handler, is_member=is_member)
    port = await server.start("::1", 0)
    return server, tls, f"[::1]:{port}"


def test_stranger_may_send_only_a_small_message_and_limits_reject_at_once() -> None:
    """A non-member declaring a big body is refused unread; over a cap: RESOURCE_EXHAUSTED."""
    member = NodeIdentity.generate(os.urandom)
    gate = asyncio.Event()
    handled: list[int] = []

    async def handler(src: bytes, body: bytes) -> bytes:
        handled.append(len(body))
        await gate.wait()
        return b"ok"

    async def main() -> None:
        server, tls, ep = await _serve(handler, is_member=lambda k: k == member.wg_public_key)
        stranger = RpcClient(NodeIdentity.generate(os.urandom), timeout=10)
        mclient = RpcClient(member, timeout=10)
        try:
            with pytest.raises(RpcError, match="PERMISSION_DENIED"):
                await stranger.call(ep, tls.fingerprint, b"x" * (MAX_STRANGER_MESSAGE + 1))
            assert handled == []
            # Caps: the calls over a limit fail at once, while the others wait in the handler.
            held = [
                asyncio.create_task(mclient.call(ep, tls.fingerprint, b"m"))
                for _ in range(MAX_CALLS_PER_KEY)
            ]
            held += [
                asyncio.create_task(stranger.call(ep, tls.fingerprint, b"s"))
                for _ in range(MAX_STRANGER_CALLS_PER_ADDRESS)
            ]
            n = MAX_CALLS_PER_KEY + MAX_STRANGER_CALLS_PER_ADDRESS
            deadline = time.monotonic() + 20
            while len(handled) < n:
                assert time.monotonic() < deadline, handled
                await asyncio.sleep(0.01)
            t0 = time.monotonic()
            with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
                await mclient.call(ep, tls.fingerprint, b"m")
            with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
                await stranger.call(ep, tls.fingerprint, b"s")
            assert time.monotonic() - t0 < 5
            assert len(handled) == n
            gate.set()
            assert await asyncio.gather(*held) == [b"ok"] * n
            assert server.calls_in_flight == 0
            # A body that does not match its signed hash/length is refused.
            assert await mclient.call(ep, tls.fingerprint, b"again") == b"ok"
        finally:
            await stranger.close()
            await mclient.close()
            await server.stop()

    asyncio.run(main())


def test_ten_thousand_rejected_calls_log_a_constant_number_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Finding 8: refusals are summarised per source per interval, not logged per call."""

    async def handler(src: bytes, body: bytes) -> bytes:
        raise AssertionError("never reached")

    async def main() -> int:
        server, tls, ep = await _serve(handler)
        ident = NodeIdentity.generate(os.urandom)
        sem = asyncio.Semaphore(16)
        refused = 0
        creds = grpc.ssl_channel_credentials(root_certificates=tls.cert_pem)
        opts = [("grpc.ssl_target_name_override", TLS_NAME)]
        try:
            async with grpc.aio.secure_channel(ep, creds, options=opts) as ch:
                call = ch.unary_unary(FULL_METHOD)

                async def one(i: int) -> None:
                    nonlocal refused
                    md = _bad_md(ident, 1) if i % 2 else ()
                    async with sem:
                        try:
                            await call(b"x", metadata=md, timeout=30)
                        except grpc.aio.AioRpcError as e:
                            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
                            refused += 1

                await asyncio.gather(*(one(i) for i in range(10_000)))
            server.refusals.flush()
        finally:
            await server.stop()
        return refused

    with caplog.at_level(logging.DEBUG, logger="smegmesh.daemon.transport"):
        refused = asyncio.run(main())
    assert refused == 10_000
    lines = [r.getMessage() for r in caplog.records if r.name == "smegmesh.daemon.transport"]
    assert len(lines) <= 3, lines
    assert any("9999 calls from ::1" in m for m in lines), lines
    assert any("bad signature x" in m and "no valid auth metadata x" in m for m in lines), lines


def test_ratelog_summarises_per_source_and_bounds_sources() -> None:
    now = [0.0]
    records: list[str] = []

    class H(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.ratelog")
    logger.addHandler(H())
    logger.setLevel(logging.INFO)
    rl = RateLog(logger, "refused", interval_s=60, max_sources=3, clock=lambda: now[0])
    for i in range(10_000):
        rl.note(f"192.0.2.{i % 5}", "bad signature" if i % 3 else "not a member")
    assert len(rl) <= 4  # 3 sources + "other sources"
    assert len(records) == 3  # the first event of each tracked source
    now[0] = 61
    rl.note("192.0.2.0", "bad signature")  # a new interval: summaries of the last one
    assert len(records) == 3 + 4
    assert any(m.startswith("refused 1999 calls from 192.0.2.1 in the last 61 s") for m in records)
    assert any("from other sources" in m for m in records)
    # A source that keeps going is not announced again; a quiet one is forgotten.
    now[0] = 122
    rl.flush()
    now[0] = 183
    rl.flush()
    rl.note("192.0.2.0", "bad signature")
    assert records[-1].startswith("refused call from 192.0.2.0: bad signature")


# ---------------------------------------------------------------- state > one message


def _max_routes(mesh_id: str) -> tuple[RouteAdv, ...]:
    base = ipaddress.IPv6Network("fd5e:0:0:0::/48")
    subnets = base.subnets(new_prefix=64)
    path = tuple(f"{i:x}" + "m" * 62 for i in range(MAX_ROUTE_PATH))  # 63-char mesh ids
    return tuple(RouteAdv(str(next(subnets)), path) for _ in range(MAX_ROUTES))


def _largest_legal(rec: NodeRecord, ident: NodeIdentity, now: int) -> NodeRecord:
    """``rec`` with as many maximal routes as a record may hold (``MAX_RECORD_BYTES``)."""
    routes = _max_routes(rec.mesh_id)
    lo, hi = 0, len(routes)
    while lo < hi:  # the most routes whose record still fits
        mid = (lo + hi + 1) // 2
        try:
            rec.evolve(ident, now, routes=routes[:mid])
            lo = mid
        except RecordError:
            hi = mid - 1
    return rec.evolve(ident, now, routes=routes[:lo])


async def _publish_big_records(owner: Smegd, mesh_id: str, token: str, n: int) -> int:
    """``n`` members (in this process) join, then each publishes a largest legal record.

    Each is admitted (its record then carries the admission chain the member
    sent back), announces itself with a small record, then publishes the big one.
    """
    tok = parse_token(token)
    b = tok.bootstrap[0]
    total = 0
    now = int(time.time() * 1000)
    for _ in range(n):
        ident = NodeIdentity.generate(os.urandom)
        client = RpcClient(ident, timeout=30)
        try:
            small = NodeRecord.create(ident, mesh_id, version=now, now_ms=now, role=Role.CLIENT)
            reply = decode(
                await client.call(
                    b.control_endpoint, b.tls_fp, encode(JoinRequest(mesh_id, tok.secret, small))
                )
            )
            assert isinstance(reply, JoinReply), reply
            admitted = small.evolve(ident, now + 1, chain=reply.chain)
            await client.call(b.control_endpoint, b.tls_fp, encode(Push(mesh_id, (admitted,))))
            big = _largest_legal(admitted, ident, now + 2)
            total += len(encode(Push(mesh_id, (big,))))
            await client.call(b.control_endpoint, b.tls_fp, encode(Push(mesh_id, (big,))))
        finally:
            await client.close()
    return total


def test_mesh_state_larger_than_one_message_is_still_joinable() -> None:
    """Finding 2: a join reply is one page; the joiner gets the rest by anti-entropy."""
    n = int(os.environ.get("SMEG_BIG_RECORDS", "14"))
    slow = {"heartbeatInterval": 600}  # the in-process members never answer probes
    with cluster(2, extra=slow) as c:
        a, b = c.daemons
        mesh_id = str(a.api("POST", "/v1/meshes")["mesh_id"])
        token = a.api("POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": n + 1})[
            "token"
        ]
        size = asyncio.run(_publish_big_records(a, mesh_id, token, n))
        assert size > MAX_MESSAGE  # the state does not fit into one message
        wait_until(lambda: len(a.mesh_keys(mesh_id)) == n + 1, 60, 0.5, "owner has every record")
        b.api("POST", "/v1/join", json={"token": token}, timeout=120)
        want = a.mesh_keys(mesh_id) | {b.self_key(mesh_id)}
        wait_until(lambda: b.mesh_keys(mesh_id) == want, 120, 0.5, "joiner gets the full state")
        routes = [len(nd.get("routes") or ()) for nd in b.mesh(mesh_id)["nodes"]]
        print(f"state {size / 1e6:.1f} MB in {n} records; joiner routes per node: {routes}")
        assert max(routes) > 0 and sorted(routes)[-n:] == [max(routes)] * n  # all arrived whole


# ---------------------------------------------------------------- no reflection


class CountingListener:
    """A plain TCP listener (no TLS, not smegmesh) that counts and drops connections."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        self.sock.bind(("::1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._t.join()
        self.sock.close()


async def _join_pointing_at(token: str, ident: NodeIdentity, endpoint: str, fp: bytes) -> None:
    tok = parse_token(token)
    b = tok.bootstrap[0]
    now = int(time.time() * 1000)
    rec = NodeRecord.create(
        ident,
        tok.mesh_id,
        version=now,
        now_ms=now,
        role=Role.PEER,
        wg_endpoint="[::1]:51999",
        control_endpoint=endpoint,
        tls_fp=fp,
    )
    client = RpcClient(ident, timeout=10)
    try:
        reply = decode(
            await client.call(
                b.control_endpoint, b.tls_fp, encode(JoinRequest(tok.mesh_id, tok.secret, rec))
            )
        )
        assert isinstance(reply, JoinReply), reply
        # announce ourselves with the admission chain the member sent back
        admitted = rec.evolve(ident, now + 1, chain=reply.chain)
        await client.call(b.control_endpoint, b.tls_fp, encode(Push(tok.mesh_id, (admitted,))))
    finally:
        await client.close()


def test_endpoint_that_is_no_smegmesh_node_is_backed_off() -> None:
    """Finding 7: a member's record naming a foreign listener is not a reflector.

    One member writes the same foreign ``host:port`` into its records in three
    meshes shared with two daemons; the daemons back it off (per endpoint and
    pin, across meshes) and report it once, then in summaries.
    """
    listener = CountingListener()
    window = float(os.environ.get("SMEG_REFLECT_WINDOW", "20"))
    try:
        # A slow failure detector keeps the foreign endpoint's record live (as a
        # member refuting its prunes would): gossip then goes there every second.
        with cluster(2, extra={"heartbeatInterval": 600}) as c:
            a, b = c.daemons
            meshes = [create_mesh(a, [b]) for _ in range(3)]
            ident, fp = NodeIdentity.generate(os.urandom), os.urandom(32)
            for mesh_id in meshes:
                token = a.api(
                    "POST", f"/v1/meshes/{mesh_id}/invites", json={"ttl_s": 600, "uses": 1}
                )["token"]
                asyncio.run(_join_pointing_at(token, ident, f"[::1]:{listener.port}", fp))
            wait_until(lambda: listener.count > 0, 30, 0.1, "a first connection to the listener")
            # Counted from here (the member's own join calls came from the endpoint's
            # address and, rightly, cleared the back-off: see _clear_backoff).
            t0, n0 = time.monotonic(), listener.count
            deadline = t0 + window
            while time.monotonic() < deadline:
                time.sleep(0.5)  # a fixed observation window: we count what happens in it
            n = listener.count - n0
            logs = a.log() + b.log()
            print(f"{n} connections in {window:.0f} s from two members of three meshes")
            # Exponential back-off from 1 s: at most ~log2(window) + 1 attempts per daemon.
            assert n <= 2 * (math.log2(window) + 2), n
            # Reported once (then summarised), not per attempt.
            lines = [ln for ln in logs.splitlines() if f"[::1]:{listener.port}" in ln]
            assert 1 <= len(lines) <= 4, lines
    finally:
        listener.close()


def test_endpoint_backoff_doubles_up_to_a_cap_and_clears_on_success() -> None:
    now = [0.0]
    bo = EndpointBackoff(1, 300, max_entries=2, clock=lambda: now[0])
    k = ("[::1]:4000", b"f" * 32)
    assert bo.wait(k) == 0
    delays = [bo.failed(k) for _ in range(12)]
    assert delays[:4] == [1, 2, 4, 8] and delays[-1] == 300
    assert bo.wait(k) == 300
    assert bo.wait(("[::1]:4000", b"g" * 32)) == 0  # another pin: not affected
    bo.ok(k)
    assert bo.wait(k) == 0
    for i in range(5):
        bo.failed((f"h{i}:1", b""))
    assert len(bo) == 2  # bounded


def test_caller_that_never_sends_its_body_does_not_hold_a_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slow-loris: admitted strangers that withhold their body are dropped after a timeout."""
    monkeypatch.setattr(rpc_server, "STRANGER_READ_TIMEOUT_S", 1.0)

    async def handler(src: bytes, body: bytes) -> bytes:
        return b"ok"

    async def main() -> None:
        server, tls, ep = await _serve(handler, is_member=lambda k: False)
        stranger = RpcClient(NodeIdentity.generate(os.urandom), timeout=10)
        ident = NodeIdentity.generate(os.urandom)
        never = asyncio.Event()

        async def withheld() -> AsyncIterator[bytes]:
            await never.wait()
            yield b"x"

        creds = grpc.ssl_channel_credentials(root_certificates=tls.cert_pem)
        opts = [("grpc.ssl_target_name_override", TLS_NAME)]
        try:
            async with grpc.aio.secure_channel(ep, creds, options=opts) as ch:
                ts = int(time.time() * 1000)
                digest = hashlib.sha256(b"x").digest()
                md = (
                    ("x-smeg-key", ident.wg_public_key.hex()),
                    ("x-smeg-sign", ident.sign_public_key.hex()),
                    ("x-smeg-ts", str(ts)),
                    ("x-smeg-hash", digest.hex()),
                    ("x-smeg-len", "1"),
                    (
                        "x-smeg-sig",
                        ident.sign(transport._signed_digest(tls.fingerprint, ts, digest)).hex(),
                    ),
                )

                async def slow_call() -> bytes:
                    reply: bytes = await ch.stream_unary(FULL_METHOD)(
                        withheld(), metadata=md, timeout=120
                    )
                    return reply

                slow = [
                    asyncio.create_task(slow_call()) for _ in range(MAX_STRANGER_CALLS_PER_ADDRESS)
                ]
                deadline = time.monotonic() + 10
                while server.calls_in_flight < len(slow):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                with pytest.raises(RpcError, match="RESOURCE_EXHAUSTED"):
                    await stranger.call(ep, tls.fingerprint, b"join")
                for t in slow:  # dropped by the server's timeout, long before their own
                    with pytest.raises(grpc.aio.AioRpcError) as ei:
                        await asyncio.wait_for(t, 15)
                    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert await stranger.call(ep, tls.fingerprint, b"join") == b"ok"
        finally:
            await stranger.close()
            await server.stop()

    asyncio.run(main())


def test_pages_are_bounded_and_keep_every_item_in_order() -> None:
    ident = NodeIdentity.generate(os.urandom)
    recs = []
    for i in range(6):
        idn = NodeIdentity.generate(os.urandom) if i else ident
        r = NodeRecord.create(idn, "m1", version=1, now_ms=1, role=Role.CLIENT)
        recs.append(r.evolve(idn, 2, routes=_max_routes("m1")[: 15 * (i + 1)]))
    sizes = [item_size(r) for r in recs]
    budget = sizes[-1] + sizes[0]
    ps = pages(recs, budget)
    assert [r for p in ps for r in p] == recs
    assert all(sum(item_size(r) for r in p) <= budget or len(p) == 1 for p in ps)
    first, cut = page(recs, budget)
    assert cut and first == ps[0]
    assert page(recs[:1], 1) == (recs[:1], False)  # one item always goes


def test_a_sync_step_fits_in_one_message_however_far_apart_the_replicas() -> None:
    """Thousands of differing subtrees: each step stays under the transport's cap,
    and repeated sessions still converge."""
    from smegmesh.core.state import MeshState
    from smegmesh.core.sync import SyncSession

    mesh_id = "m1"
    a, b = MeshState(mesh_id), MeshState(mesh_id)
    recs = []
    for _ in range(3000):
        idn = NodeIdentity.generate(os.urandom)
        recs.append(NodeRecord.create(idn, mesh_id, version=1, now_ms=1, role=Role.CLIENT))
    a.apply_many(recs, 2)
    b.apply_many(recs[::2], 2)  # b holds every other record: differences everywhere
    b.apply_many(
        [NodeRecord.create(NodeIdentity.generate(os.urandom), mesh_id, version=1, now_ms=1)], 2
    )
    biggest = 0
    for _ in range(50):
        s = SyncSession.initiator(b, 3, rng=random.Random(0))
        sessions: dict[tuple[bytes, int], SyncSession] = {}
        msg = s.start()
        while msg is not None:
            biggest = max(biggest, len(encode(msg)))
            reply, _sess, _m = SyncSession.respond(a, sessions, b"x" * 32, msg, 3)
            biggest = max(biggest, len(encode(reply)))
            msg, _merged = s.receive(reply, 3)
        if a.digest() == b.digest():
            break
    assert biggest <= MAX_MESSAGE, biggest
    assert set(b.all_items()) >= set(a.all_items())
    # The worst a step may be asked to say: every question list at its maximum.
    s = SyncSession.initiator(a, 3, rng=random.Random(0))
    nodes = [(3, i, os.urandom(64)) for i in range(4096)]
    leaves = [
        (4, i, tuple((os.urandom(32), 2**62, 2**62, os.urandom(4)) for _ in range(4)))
        for i in range(4096)
    ]
    wants = [os.urandom(32) for _ in range(8192)]
    step = s._step(nodes, leaves, list(a.all_items()), wants)
    assert step is not None and s.truncated
    assert len(encode(step)) <= MAX_MESSAGE, len(encode(step))
