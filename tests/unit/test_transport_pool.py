"""Issue 14, item 2: the client's channels form a bounded pool (cap, LRU, idle close).

Real gRPC servers on loopback; what is counted is the client's established TCP
connections (``/proc/net/tcp6``), not only the pool's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from smegmesh.core.identity import NodeIdentity
from smegmesh.daemon.transport import RpcClient, RpcError, RpcServer, TlsIdentity


def client_connections(ports: set[int]) -> int:
    """Established TCP connections from this host to one of ``ports``."""
    n = 0
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "01" and int(f[2].rsplit(":", 1)[1], 16) in ports:
                n += 1
    return n


async def wait_for(cond, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _handler(_src: bytes, body: bytes) -> bytes:
    return body[::-1]


def test_client_keeps_at_most_cap_channels_and_closes_idle_ones() -> None:
    cap, n = 4, 7

    async def main() -> None:
        servers: list[tuple[RpcServer, str, bytes]] = []
        now = [1000.0]
        client = RpcClient(
            NodeIdentity.generate(os.urandom),
            timeout=10,
            max_channels=cap,
            channel_idle_s=60,
            clock=lambda: now[0],
        )
        try:
            for _ in range(n):
                tls = TlsIdentity.generate()
                server = RpcServer(tls, _handler)
                port = await server.start("::1", 0)
                servers.append((server, f"[::1]:{port}", tls.fingerprint))
            ports = {int(ep.rsplit(":", 1)[1]) for _s, ep, _fp in servers}
            for i, (_s, ep, fp) in enumerate(servers):
                now[0] += 1
                assert await client.call(ep, fp, b"ab%d" % i) == b"%dba" % i
                assert client.open_channels <= cap
            assert client.open_channels == cap
            assert client.evictions == n - cap
            assert await wait_for(lambda: client_connections(ports) <= cap), client_connections(
                ports
            )
            # An evicted member is reached again (a new pinned channel), still capped.
            _s, ep0, fp0 = servers[0]
            assert await client.call(ep0, fp0, b"xy") == b"yx"
            assert client.open_channels == cap
            # The most recently used stay open: calling them needs no new connection.
            attempts = client.attempts
            for _s, ep, fp in servers[-(cap - 1) :]:
                assert await client.call(ep, fp, b"q") == b"q"
            assert client.attempts == attempts
            # Idle for longer than channel_idle_s: closed on the next call.
            now[0] += 61
            assert await client.call(ep0, fp0, b"z") == b"z"
            assert client.open_channels == 1
            assert await wait_for(lambda: client_connections(ports) <= 1), client_connections(ports)
        finally:
            await client.close()
            for server, _ep, _fp in servers:
                await server.stop(0)

    asyncio.run(main())


def test_calls_past_the_cap_wait_for_a_free_connection_and_the_cap_holds() -> None:
    """More concurrent calls to distinct members than the cap: all succeed, and the
    client's established connections never exceed the cap meanwhile (a busy
    channel is not closed to make room: it kept its socket until its calls
    ended, one extra connection per call past the cap)."""
    cap, n = 2, 5
    gate = asyncio.Event()
    arrived = [0]

    async def slow(_src: bytes, body: bytes) -> bytes:
        arrived[0] += 1
        await gate.wait()
        return body

    async def main() -> None:
        servers = []
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=20, max_channels=cap)
        seen: list[int] = []
        stop = asyncio.Event()
        over_s = [0.0]  # the longest stretch with more connections than the cap

        async def sample() -> None:
            since = None
            while not stop.is_set():
                seen.append(client_connections(ports))
                now = time.monotonic()
                if seen[-1] <= cap:
                    since = None
                elif since is None:
                    since = now
                else:
                    over_s[0] = max(over_s[0], now - since)
                await asyncio.sleep(0.01)

        try:
            for _ in range(n):
                tls = TlsIdentity.generate()
                server = RpcServer(tls, slow)
                port = await server.start("::1", 0)
                servers.append((server, f"[::1]:{port}", tls.fingerprint))
            ports = {int(ep.rsplit(":", 1)[1]) for _s, ep, _fp in servers}
            sampler = asyncio.create_task(sample())
            calls = [
                asyncio.create_task(client.call(ep, fp, b"%d" % i))
                for i, (_s, ep, fp) in enumerate(servers)
            ]
            assert await wait_for(lambda: arrived[0] >= cap)
            await asyncio.sleep(0.3)  # the others had time to open connections: they wait
            assert arrived[0] == cap
            assert client.slot_waits >= 1
            gate.set()
            replies = await asyncio.gather(*calls)
            assert replies == [b"%d" % i for i in range(n)]
            stop.set()
            await sampler
            # A channel closed to make room has its socket closed by gRPC's own
            # thread a moment after close() returns: under load a sampler saw
            # cap + 1 or + 2 for one sample at the end (one run in ten). What
            # the cap forbids is a connection per waiting call held while the
            # calls last (the bug this test was written for: 0.3 s and more).
            assert over_s[0] < 0.1, " ".join(map(str, seen))
            assert max(seen) <= cap + 2, " ".join(map(str, seen))
            assert client.connections <= cap
        finally:
            await client.close()
            for server, _ep, _fp in servers:
                await server.stop(0)

    asyncio.run(main())


def test_calls_past_the_cap_fail_cleanly_when_no_connection_frees_in_time() -> None:
    cap = 1
    gate = asyncio.Event()

    async def slow(_src: bytes, body: bytes) -> bytes:
        await gate.wait()
        return body

    async def main() -> None:
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=20, max_channels=cap)
        servers = []
        try:
            for _ in range(2):
                tls = TlsIdentity.generate()
                server = RpcServer(tls, slow)
                servers.append((server, f"[::1]:{await server.start('::1', 0)}", tls.fingerprint))
            (_a, ep_a, fp_a), (_b, ep_b, fp_b) = servers
            busy = asyncio.create_task(client.call(ep_a, fp_a, b"a"))
            assert await wait_for(lambda: client.open_channels == 1)
            t0 = time.monotonic()
            with pytest.raises(RpcError, match=r"connections busy \(maxChannels\)"):
                await client.call(ep_b, fp_b, b"b", timeout=0.5)
            assert 0.4 <= time.monotonic() - t0 < 5
            gate.set()
            assert await busy == b"a"
            assert await client.call(ep_b, fp_b, b"b") == b"b"  # the slot is free now
        finally:
            await client.close()
            for server, _ep, _fp in servers:
                await server.stop(0)

    asyncio.run(main())


def test_a_certificate_fetch_counts_against_the_cap(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Opening a channel to a new member fetches its certificate over a connection
    of its own: an idle channel is closed to make room before it, not after."""
    import smegmesh.daemon.rpc_client as rpc_client
    import smegmesh.daemon.rpc_tls as rpc_tls

    cap, n = 2, 3
    real = rpc_tls.fetch_certificate
    seen: list[int] = []
    ports: set[int] = set()

    async def fetch(host, port, timeout, wire=None):  # type: ignore[no-untyped-def]
        _r, w = await asyncio.open_connection(host, port)  # the fetch's own connection
        # grpc closes an evicted channel's socket on its own thread, a moment after
        # close() returns (seen under load): wait for it, but not for a close that
        # comes only after the fetch (the bug this test is for).
        await wait_for(lambda: client_connections(ports) <= cap, timeout=2)
        seen.append(client_connections(ports))
        w.transport.abort()
        return await real(host, port, timeout, wire)

    monkeypatch.setattr(rpc_client, "fetch_certificate", fetch)

    async def main() -> None:
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=10, max_channels=cap)
        servers = []
        try:
            for _ in range(n):
                tls = TlsIdentity.generate()
                server = RpcServer(tls, _handler)
                port = await server.start("::1", 0)
                ports.add(port)
                servers.append((server, f"[::1]:{port}", tls.fingerprint))
            for i, (_s, ep, fp) in enumerate(servers):
                assert await client.call(ep, fp, b"x%d" % i) == b"%dx" % i
            assert seen and max(seen) <= cap, seen
        finally:
            await client.close()
            for server, _ep, _fp in servers:
                await server.stop(0)

    asyncio.run(main())


def test_reconnect_reuses_the_pinned_certificate_and_the_pin_still_holds() -> None:
    """A channel closed for idleness is reopened without fetching the certificate again.

    The fetch is a TLS handshake of its own (~2 KB on the wire, an ECDHE and a
    signature): at scale, where nearly every probe opens a new channel, it was
    half of a node's wire bytes. The certificate is kept by its fingerprint
    and remains the channel's only root: another server's certificate at the
    pinned endpoint is still refused.
    """

    async def main() -> None:
        now = [1000.0]
        client = RpcClient(
            NodeIdentity.generate(os.urandom), timeout=10, channel_idle_s=60, clock=lambda: now[0]
        )
        a_tls, b_tls = TlsIdentity.generate(), TlsIdentity.generate()
        a, b = RpcServer(a_tls, _handler), RpcServer(b_tls, _handler)
        try:
            ep_a = f"[::1]:{await a.start('::1', 0)}"
            ep_b = f"[::1]:{await b.start('::1', 0)}"
            assert await client.call(ep_a, a_tls.fingerprint, b"ab") == b"ba"
            assert client.attempts == 1
            now[0] += 61  # idle: the next call closes the channel and opens a new one
            assert await client.call(ep_a, a_tls.fingerprint, b"cd") == b"dc"
            assert client.evictions == 1
            assert client.attempts == 1  # no second certificate fetch
            # A's certificate pinned, B answering: refused, cached certificate or not.
            try:
                await client.call(ep_b, a_tls.fingerprint, b"x")
            except RpcError:
                pass
            else:
                raise AssertionError("a server with another certificate was accepted")
        finally:
            await client.close()
            await a.stop(0)
            await b.stop(0)

    asyncio.run(main())


class _AnsweringDatagrams:
    """Stands in for a ``DatagramClient`` whose every call is answered by datagram."""

    def target(self, _endpoint: str, _to: bytes, _body: bytes) -> tuple[str, int, int]:
        return ("::1", 9, 10)

    async def call(self, *_args: object) -> bytes:
        return b"by datagram"

    def close(self) -> None:
        pass


def test_idle_channels_close_when_every_call_goes_by_datagram() -> None:
    """Found at 3,000 members: channels opened for a join's state transfer stayed
    open for good, because only a call over the stream swept idle channels, and
    once settled a node's calls all go by datagram (63 channels, 81 fds)."""

    async def main() -> None:
        now = [1000.0]
        ident = NodeIdentity.generate(os.urandom)
        client = RpcClient(ident, timeout=10, channel_idle_s=60, clock=lambda: now[0])
        tls = TlsIdentity.generate()
        server = RpcServer(tls, _handler)
        port = await server.start("::1", 0)
        try:
            assert await client.call(f"[::1]:{port}", tls.fingerprint, b"ab") == b"ba"
            assert client.open_channels == 1
            client.datagrams = _AnsweringDatagrams()  # type: ignore[assignment]
            now[0] += 61
            to = NodeIdentity.generate(os.urandom).wg_public_key
            reply = await client.call(f"[::1]:{port}", tls.fingerprint, b"ping", to=to)
            assert reply == b"by datagram"
            assert client.open_channels == 0
            assert await wait_for(lambda: client_connections({port}) == 0)
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(main())
