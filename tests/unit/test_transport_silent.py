"""Calls to endpoints that do not answer: backed off, and bounded by the call's own time.

Found by a review (twenty-sixth session): a member may name any address as its
control endpoint and have every node relay pings to it (a ``PingReq`` for
itself); the 0.4 s relay sent its 2 datagrams and failed with no back-off, so
every node sent ~80 datagrams a second at any address a record named. And a
call's timeout did not cover setting up its connection: a 0.4 s relay to an
endpoint that accepts TCP and never speaks took 5 s (the certificate fetch
took the client's default timeout, and callers waited for the endpoint's
lock with none), holding the requester's slot at the relay 12 times longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dgram_helpers import key_ids
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.messages import Ack, Ping
from smegmesh.core.wire import encode
from smegmesh.daemon.rpc_dgram import DatagramStats
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.transport import RpcClient, RpcError, RpcServer, TlsIdentity

PING = encode(Ping("mesh", 1))
ACK = encode(Ack("mesh", 1))
ME = NodeIdentity.from_seed(b"m" * 32)
SRV = NodeIdentity.from_seed(b"s" * 32)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@contextlib.asynccontextmanager
async def silent_endpoint() -> AsyncIterator[str]:
    """An endpoint that accepts TCP and never speaks TLS; yields ``host:port``."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        for w in held:
            w.close()
        srv.close()


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.n = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.n += 1


def test_relayed_probes_to_a_silent_address_are_backed_off() -> None:
    """A member's 16 PingReqs in flight at a node, renewed as each fails: 6
    rounds of 32 datagrams at the silent address before (0.4 s a round), one now."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sink = Sink()
        tr, _ = await loop.create_datagram_endpoint(lambda: sink, local_addr=("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{tr.get_extra_info('sockname')[1]}"  # a third party's address
        x_key = NodeIdentity.generate(os.urandom).wg_public_key
        v = RpcClient(ME, timeout=5, datagrams=DatagramClient(DatagramStats()))
        try:
            for _ in range(6):  # each round as soon as the last has failed
                rs = await asyncio.gather(
                    *(v.call(endpoint, bytes(32), PING, 0.4, to=x_key) for _ in range(16)),
                    return_exceptions=True,
                )
                assert all(isinstance(r, RpcError) for r in rs), rs
            assert sink.n <= 64, sink.n
        finally:
            tr.close()
            await v.close()

    _run(main())


def test_a_node_whose_datagrams_go_unanswered_is_probed_over_the_stream_meanwhile() -> None:
    """Its UDP port silent, its stream answering: a probe (0.4 s, no time for a
    TLS connection after the datagrams) failed each time; now the one after a
    failure goes over the stream."""

    async def handler(_src: bytes, body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler)  # no datagram socket
        ep = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
        client = RpcClient(ME, timeout=5, datagrams=DatagramClient(DatagramStats()))
        try:
            # the datagrams go unanswered, with no time left for the stream
            with pytest.raises(RpcError, match="no answer by datagram"):
                await client.call(ep, tls.fingerprint, PING, 0.4, to=SRV.wg_public_key)
            assert await client.call(ep, tls.fingerprint, PING, 0.4, to=SRV.wg_public_key) == ACK
            assert client.transport_calls["out", "Ping", "stream"] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_an_endpoint_that_answers_datagrams_is_not_backed_off_for_a_lost_one() -> None:
    """A node that speaks datagrams and misses one probe (busy) is probed by
    datagram again at once: its silence fails that call only."""
    gate = asyncio.Event()

    async def handler(_src: bytes, body: bytes) -> bytes:
        if gate.is_set():
            return ACK
        await gate.wait()  # busy: the first probe goes unanswered
        return ACK

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler, datagram_keys=key_ids(SRV, ME))
        ep = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
        client = RpcClient(ME, timeout=5, datagrams=DatagramClient(DatagramStats()))
        try:
            gate.set()
            assert await client.call(ep, tls.fingerprint, PING, 0.4, to=SRV.wg_public_key) == ACK
            gate.clear()
            with pytest.raises(RpcError, match="no answer by datagram"):
                await client.call(ep, tls.fingerprint, PING, 0.4, to=SRV.wg_public_key)
            gate.set()
            assert await client.call(ep, tls.fingerprint, PING, 0.4, to=SRV.wg_public_key) == ACK
            assert client.transport_calls["out", "Ping", "stream"] == 0
        finally:
            gate.set()
            await client.close()
            await server.stop(0)

    _run(main())


def test_a_short_call_to_a_silent_endpoint_ends_within_its_own_timeout() -> None:
    """Three 0.4 s calls to an endpoint that accepts TCP and never speaks TLS
    end in ~0.4 s (5 s before: the certificate fetch took the client's timeout,
    and the others waited for the endpoint's lock with none). One connection
    attempt goes on with the client's timeout, and its failure is backed off."""

    async def main() -> None:
        async with silent_endpoint() as ep:
            await three_short_calls(ep)

    async def three_short_calls(ep: str) -> None:
        client = RpcClient(ME, timeout=1.5)
        try:
            t0 = time.monotonic()
            calls = [client.call(ep, bytes(32), b"ping", timeout=0.4) for _ in range(3)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            took = time.monotonic() - t0
            assert all(isinstance(r, RpcError) for r in results), results
            assert took < 1.0, f"0.4 s calls took {took:.1f} s"
            assert client.attempts == 1
            deadline = time.monotonic() + 10
            while not client.backoff.wait((ep, bytes(32))):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert client.connections == 0  # the attempt's place under the cap is free
            with pytest.raises(RpcError, match="backing off"):
                await client.call(ep, bytes(32), b"ping", timeout=0.4)
        finally:
            await client.close()

    _run(main())


def test_a_connection_that_times_out_says_so() -> None:
    """A join to a busy member said "cannot reach [2001:db8:...::1]:4000: "
    and nothing more (a timeout's message is empty; the exception is always
    true, so ``e or type(e).__name__`` never named it)."""

    async def main() -> None:
        async with silent_endpoint() as ep:
            client = RpcClient(ME, timeout=0.3)
            try:
                with pytest.raises(RpcError) as err:
                    await client.call(ep, bytes(32), b"ping", timeout=5)
                assert str(err.value) == f"cannot reach {ep}: timed out"
            finally:
                await client.close()

    _run(main())


def test_a_call_whose_connection_outlasts_it_leaves_the_channel_to_the_next() -> None:
    """The connection a timed-out call started is made all the same (the
    client's timeout): the next call to that node finds it open."""

    async def handler(_src: bytes, body: bytes) -> bytes:
        return body[::-1]

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler)
        ep = f"127.0.0.1:{await server.start('127.0.0.1', 0)}"
        client = RpcClient(ME, timeout=5)
        try:
            with pytest.raises(RpcError, match="not connected"):
                await client.call(ep, tls.fingerprint, b"ab", timeout=0.001)
            deadline = time.monotonic() + 10
            while client.open_channels == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            assert await client.call(ep, tls.fingerprint, b"ab", timeout=1) == b"ba"
            assert client.attempts == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())
