"""DNS over TCP under hostile clients (issue 12 finding 6, RFC 7766 section 6.2).

A real :class:`DnsServer` on loopback, real TCP clients in the same event loop:
idle or slow clients, however many, must never keep a new client's query out.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import dns.message
import dns.rdatatype

from dns_nodes import DB, WEB1
from smegmesh.dns import DnsServer, NameView

QNAME = "db.happy-fox-1a.smeg."


def frame(name: str = QNAME) -> bytes:
    wire = dns.message.make_query(name, "AAAA").to_wire()
    return struct.pack("!H", len(wire)) + wire


async def read_reply(reader: asyncio.StreamReader) -> dns.message.Message:
    (n,) = struct.unpack("!H", await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(n))


def addresses(msg: dns.message.Message) -> set[str]:
    return {rr.address for rs in msg.answer if rs.rdtype == dns.rdatatype.AAAA for rr in rs}


async def connect(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def fresh_query(port: int, deadline: float = 3.0, source: str = "127.0.0.1") -> float:
    """A new client's query over a new connection: seconds it took (fails past ``deadline``)."""
    t0 = time.monotonic()

    async def go() -> None:
        reader, writer = await connect(port, source)
        try:
            writer.write(frame())
            reply = await read_reply(reader)
            assert addresses(reply) == {str(DB.address)}
        finally:
            writer.close()

    await asyncio.wait_for(go(), deadline)
    return time.monotonic() - t0


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the server closes the connection (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def with_server(body: Callable[[DnsServer], Awaitable[None]], **kw: Any) -> None:
    server = DnsServer(NameView([DB, WEB1]), **kw)
    await server.start("127.0.0.1", 0)
    try:
        await body(server)
    finally:
        await server.close()


def test_active_idle_flood_does_not_lock_out_a_new_client() -> None:
    """The issue's attack: 256 connections that each send a query now and then."""

    async def body(server: DnsServer) -> None:
        conns = []
        try:
            for _ in range(256):
                reader, writer = await connect(server.port)
                writer.write(frame())
                await read_reply(reader)
                conns.append((reader, writer))
            for _round in range(2):
                # Keep them all "alive" (the attacker's periodic query), then a newcomer.
                for _, writer in conns:
                    if not writer.is_closing():
                        writer.write(frame())
                took = await fresh_query(server.port)
                assert took < 3.0
            assert len(server.tcp.conns) <= server.max_tcp_clients
        finally:
            for _, writer in conns:
                writer.close()

    asyncio.run(with_server(body))


def test_slow_clients_do_not_lock_out_a_new_client() -> None:
    """Connections stuck in the middle of a message (slowloris) hold nobody off."""

    async def body(server: DnsServer) -> None:
        conns = []
        try:
            for _ in range(300):
                reader, writer = await connect(server.port)
                writer.write(frame()[:5])  # length prefix and part of the header
                conns.append((reader, writer))
            await fresh_query(server.port)
            # The stalled ones are closed after the partial-message timeout.
            reader, _ = conns[-1]
            assert await closed_within(reader, 5.0)
        finally:
            for _, writer in conns:
                writer.close()

    asyncio.run(with_server(body, tcp_message_timeout=1.0))


def test_per_client_cap_evicts_that_clients_idlest_connection() -> None:
    async def body(server: DnsServer) -> None:
        other_r, other_w = await connect(server.port, "127.0.0.3")
        other_w.write(frame())
        await read_reply(other_r)
        mine = []
        for _ in range(10):
            reader, writer = await connect(server.port, "127.0.0.2")
            writer.write(frame())
            await read_reply(reader)
            mine.append((reader, writer))
        # The six oldest of 127.0.0.2 were closed, its four newest and 127.0.0.3 kept.
        for reader, _ in mine[:6]:
            assert await closed_within(reader, 3.0)
        for reader, writer in [*mine[6:], (other_r, other_w)]:
            writer.write(frame())
            assert addresses(await asyncio.wait_for(read_reply(reader), 3)) == {str(DB.address)}
        hosts = [c.host for c in server.tcp.conns.values()]
        assert hosts.count("127.0.0.2") == 4 and hosts.count("127.0.0.3") == 1
        for _, writer in [*mine, (other_r, other_w)]:
            writer.close()

    asyncio.run(with_server(body, max_tcp_per_client=4))


def test_partial_message_timeout_cuts_a_trickle() -> None:
    """Bytes trickling in slower than the message timeout do not keep a connection open."""

    async def body(server: DnsServer) -> None:
        reader, writer = await connect(server.port)
        data = frame()
        t0 = time.monotonic()
        try:
            for byte in data[:-1]:
                writer.write(bytes([byte]))
                if await closed_within(reader, 0.1):
                    break
            else:
                raise AssertionError("the server waited for the whole trickled message")
            assert time.monotonic() - t0 < 2.0
        finally:
            writer.close()

    asyncio.run(with_server(body, tcp_idle_timeout=30.0, tcp_message_timeout=0.5))


def test_pipelining_client_that_never_reads_is_dropped() -> None:
    """Queries pipelined by a client that never reads replies: bounded, then closed."""

    async def body(server: DnsServer) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        # Never read: the replies pile up on the server's side.
        sending = loop.create_task(loop.sock_sendall(sock, frame() * 50000))
        try:
            assert await server_gave_up(sock, 8.0)
            await fresh_query(server.port)
        finally:
            sending.cancel()
            sock.close()

    asyncio.run(with_server(body, tcp_idle_timeout=1.0))


async def server_gave_up(sock: socket.socket, timeout: float) -> bool:
    """Wait, without reading, until the server closes or resets the connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # TCP_INFO's first byte is the state: 1 is ESTABLISHED.
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:
            return True
        await asyncio.sleep(0.05)
    return False
