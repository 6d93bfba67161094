"""``RpcClient.probe``: a client's forwarding probe over the stream (``datagrams: false``).

Before, a client with datagrams off sent no probe through its peer at all, so
a peer that forwarded nothing kept it for good (docs/SECURITY.md). A probe is
one call on a connection of its own: pinned as ever, always sent (a back-off
earned elsewhere does not skip it), teaching no back-off, and closed after.
Real gRPC servers on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import grpc

from smegmesh.core.identity import NodeIdentity
from smegmesh.daemon.transport import RpcClient, RpcServer, TlsIdentity
from test_transport_pool import client_connections, wait_for

TO = b"t" * 32


async def _handler(_src: bytes, body: bytes) -> bytes:
    return body[::-1]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_a_probe_is_answered_pinned_and_leaves_no_connection_nor_back_off() -> None:
    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, _handler)
        port = await server.start("::1", 0)
        ep, fp = f"[::1]:{port}", tls.fingerprint
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        try:
            assert await client.probe(ep, fp, b"abc", 3.0, TO) == b"cba"
            assert client.open_channels == 0 and client.connections == 0
            assert await wait_for(lambda: client_connections({port}) == 0, 10)
            # the wrong pin: no answer, and nothing learnt
            assert await client.probe(ep, b"\x00" * 32, b"abc", 3.0, TO) is None
            assert client.backoff.wait((ep, b"\x00" * 32)) == 0
            # nobody there: None within the probe's time, no back-off learnt
            dead = f"[::1]:{_closed_port()}"
            assert await client.probe(dead, fp, b"abc", 1.0, TO) is None
            assert client.backoff.wait((dead, fp)) == 0
            # a back-off earned by ordinary calls does not skip a probe
            client.backoff.failed((ep, fp))
            assert client.backoff.wait((ep, fp)) > 0
            assert await client.probe(ep, fp, b"xy", 3.0, TO) == b"yx"
            assert client.connections == 0
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(main())


def test_a_probe_to_a_silent_address_gives_up_in_its_time() -> None:
    """A peer that drops what it forwards: the connection never opens."""

    async def main() -> None:
        # a listening socket that never accepts or answers TLS: the handshake hangs
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::1", 0))
        srv.listen(1)
        ep = f"[::1]:{srv.getsockname()[1]}"
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        loop = asyncio.get_running_loop()
        try:
            t0 = loop.time()
            assert await client.probe(ep, b"\x01" * 32, b"abc", 1.0, TO) is None
            assert loop.time() - t0 < 2.5
            assert client.connections == 0
        finally:
            await client.close()
            srv.close()

    asyncio.run(main())


def test_a_probe_that_waited_for_a_slot_still_ends_within_its_time() -> None:
    """Found by review: the wait for a slot under ``maxChannels`` was not
    counted against the probe's time, and the certificate fetch had the whole
    of it again, so a probe could take twice its 3 s (past the 6 s after which
    the core forgets it and starts the next: two probes' connections at once)."""

    async def main() -> None:
        gate = asyncio.Event()

        async def slow(_src: bytes, body: bytes) -> bytes:
            await gate.wait()
            return body

        tls = TlsIdentity.generate()
        server = RpcServer(tls, slow)
        port = await server.start("::1", 0)
        # a listening socket that never answers TLS: the probe's fetch hangs
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.bind(("::1", 0))
        srv.listen(1)
        silent = f"[::1]:{srv.getsockname()[1]}"
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5, max_channels=1)
        loop = asyncio.get_running_loop()
        busy = asyncio.create_task(client.call(f"[::1]:{port}", tls.fingerprint, b"x"))
        try:
            assert await wait_for(lambda: client.open_channels == 1)
            loop.call_later(0.7, gate.set)  # the one slot frees after 0.7 s
            t0 = loop.time()
            assert await client.probe(silent, b"\x01" * 32, b"abc", 1.0, TO) is None
            assert loop.time() - t0 < 1.4
            assert client.connections <= 1
        finally:
            gate.set()
            await busy
            await client.close()
            await server.stop(0)
            srv.close()

    asyncio.run(main())


def test_a_probe_cancelled_while_it_closes_gives_its_slot_back(monkeypatch: Any) -> None:
    """Found by review: the probe closed its channel in ``finally`` before
    giving its slot back, so a cancel that landed during the close (a second
    one, or shutdown's) left one of ``maxChannels`` counted for good."""

    async def main() -> None:
        gate = asyncio.Event()
        arrived = asyncio.Event()

        async def hang(_src: bytes, body: bytes) -> bytes:
            arrived.set()
            await gate.wait()
            return body

        real = grpc.aio.secure_channel

        class SlowClose:
            def __init__(self, *a: Any, **k: Any) -> None:
                self._ch = real(*a, **k)

            def unary_unary(self, *a: Any, **k: Any) -> Any:
                return self._ch.unary_unary(*a, **k)

            async def close(self, grace: float | None = None) -> None:
                await asyncio.sleep(0.3)
                await self._ch.close(grace)

        monkeypatch.setattr(grpc.aio, "secure_channel", SlowClose)
        tls = TlsIdentity.generate()
        server = RpcServer(tls, hang)
        port = await server.start("::1", 0)
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        try:
            t = asyncio.create_task(client.probe(f"[::1]:{port}", tls.fingerprint, b"a", 3.0, TO))
            await asyncio.wait_for(arrived.wait(), 5)
            t.cancel()
            await asyncio.sleep(0.1)  # in the close now
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
            assert await wait_for(lambda: client.connections == 0, 3), client.connections
        finally:
            gate.set()
            await client.close()
            await server.stop(0)

    asyncio.run(main())


def test_a_probe_to_a_name_holds_no_shared_thread_for_dns(monkeypatch: Any) -> None:
    """Found by review: the datagram probe takes IP literals only, but the TLS
    one passed on a control endpoint whose name did not resolve in the daemon's
    own resolver (``control_names``), so its connection looked the name up in
    the event loop's default pool: a thread held for as long as the member's
    nameserver likes (docs/SECURITY.md, "A member's endpoint name held the
    daemon's shared threads")."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def lookup(host: Any, *a: Any, **k: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)

    async def main() -> None:
        client = RpcClient(NodeIdentity.generate(os.urandom), timeout=5)
        try:
            ep = "slow-dns.invalid:7000"
            assert await client.probe(ep, b"\x01" * 32, b"abc", 1.0, TO) is None
            assert client.connections == 0
        finally:
            await client.close()

    asyncio.run(main())
    assert "slow-dns.invalid" not in looked_up
