"""The RPC server's call slots against hostile callers (``daemon/rpc_slots.py``):
a few member keys, or an outsider's fresh keys, cannot take every slot from
the others, and a call that withholds its body is dropped in seconds.

Found by a review (twenty-sixth session): 8 member keys holding 16 bodyless
calls each (30 s a call) held all 128 slots of every node, the datagram path
asked the same counter, and honest members' probes failed until they were
pruned; 8 fresh stranger keys from 4 addresses held every non-member slot, and
every joiner was refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from dgram_helpers import key_ids
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.messages import Ack, Ping
from smegmesh.core.wire import encode
from smegmesh.daemon import rpc_server
from smegmesh.daemon.rpc_common import _signed_digest
from smegmesh.daemon.rpc_dgram_client import DatagramClient
from smegmesh.daemon.transport import (
    FULL_METHOD,
    MAX_CALLS,
    MAX_CALLS_PER_KEY,
    TLS_NAME,
    RpcClient,
    RpcError,
    RpcServer,
    TlsIdentity,
)

PING = encode(Ping("mesh", 1))
ACK = encode(Ack("mesh", 1))
HONEST = NodeIdentity.from_seed(b"h" * 32)
SRV = NodeIdentity.from_seed(b"s" * 32)


def _md(me: NodeIdentity, fp: bytes, body: bytes) -> tuple[tuple[str, str], ...]:
    ts = int(time.time() * 1000)
    digest = hashlib.sha256(body).digest()
    return (
        ("x-smeg-key", me.wg_public_key.hex()),
        ("x-smeg-sign", me.sign_public_key.hex()),
        ("x-smeg-ts", str(ts)),
        ("x-smeg-hash", digest.hex()),
        ("x-smeg-len", str(len(body))),
        ("x-smeg-sig", me.sign(_signed_digest(fp, ts, digest)).hex()),
    )


class Attacker:
    """Raw calls that announce a 1-byte body and never send it (or send it, ``body=True``)."""

    def __init__(self, tls: TlsIdentity, ep: str) -> None:
        self._creds = grpc.ssl_channel_credentials(root_certificates=tls.cert_pem)
        self._fp = tls.fingerprint
        self._ep = ep
        self._hold = asyncio.Event()
        self.channels: list[grpc.aio.Channel] = []
        self.calls: list[asyncio.Future[Any]] = []

    def channel(self) -> grpc.aio.Channel:
        opts = [("grpc.ssl_target_name_override", TLS_NAME)]
        ch = grpc.aio.secure_channel(self._ep, self._creds, options=opts)
        self.channels.append(ch)
        return ch

    async def _never(self) -> AsyncIterator[bytes]:
        await self._hold.wait()  # the body never comes
        yield b"x"

    def call(self, ch: grpc.aio.Channel, me: NodeIdentity, *, body: bool = False) -> None:
        md = _md(me, self._fp, b"x")
        if body:
            fut = ch.unary_unary(FULL_METHOD)(b"x", metadata=md, timeout=60)
        else:
            fut = ch.stream_unary(FULL_METHOD)(self._never(), metadata=md, timeout=60)
        self.calls.append(asyncio.ensure_future(fut))

    async def settled(self, server: RpcServer, n: int) -> None:
        """Wait until each of the first ``n`` calls is held by the server or refused."""
        deadline = time.monotonic() + 20
        while sum(c.done() for c in self.calls[:n]) + server.calls_in_flight < n:
            assert time.monotonic() < deadline, (server.calls_in_flight, n)
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        for c in self.calls:
            c.cancel()
        for ch in self.channels:
            await ch.close()


async def _serve(
    handler: Callable[[bytes, bytes], Awaitable[bytes]], **kw: Any
) -> tuple[RpcServer, TlsIdentity, str]:
    tls = TlsIdentity.generate()
    server = RpcServer(tls, handler, **kw)
    port = await server.start("::1", 0)
    return server, tls, f"[::1]:{port}"


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _honest_calls(server: RpcServer, tls: TlsIdentity, ep: str) -> None:
    """The honest member's stream call and its probe by datagram are both answered."""
    client = RpcClient(HONEST, timeout=3, datagrams=DatagramClient())
    try:
        try:
            reply, err = await client.call(ep, tls.fingerprint, b"sync"), None
        except RpcError as e:
            reply, err = None, str(e)
        assert reply == b"ack:sync", f"honest member refused: {err}"
        assert await client.call(ep, tls.fingerprint, PING, to=SRV.wg_public_key) == ACK
        assert server.datagrams is not None
        assert server.datagrams.stats.refused["too many calls"] == 0
        assert client.transport_calls["out", "Ping", "datagram"] == 1
    finally:
        await client.close()


def test_a_few_members_holding_bodyless_calls_do_not_lock_out_everyone() -> None:
    async def handler(_src: bytes, body: bytes) -> bytes:
        return ACK if body == PING else b"ack:" + body

    async def main() -> None:
        server, tls, ep = await _serve(handler, datagram_keys=key_ids(SRV, HONEST))
        bad = Attacker(tls, ep)
        try:
            for _ in range(MAX_CALLS // MAX_CALLS_PER_KEY):  # 8 keys, 16 calls each
                me, ch = NodeIdentity.generate(os.urandom), bad.channel()
                for _ in range(MAX_CALLS_PER_KEY):
                    bad.call(ch, me)
            await bad.settled(server, len(bad.calls))
            assert server.calls_in_flight == MAX_CALLS  # all they can hold, and they hold it
            await _honest_calls(server, tls, ep)
        finally:
            await bad.close()
            await server.stop(0)

    _run(main())


def test_a_few_members_whose_calls_sit_in_the_handler_do_not_take_every_slot() -> None:
    """Calls with their bodies, held in the handler (a relayed ping to a silent
    address holds one for the probe timeout): 8 keys do not hold all 128."""
    gate = asyncio.Event()

    async def handler(_src: bytes, body: bytes) -> bytes:
        if body == b"x":
            await gate.wait()
        return ACK if body == PING else b"ack:" + body

    async def main() -> None:
        server, tls, ep = await _serve(handler, datagram_keys=key_ids(SRV, HONEST))
        bad = Attacker(tls, ep)
        try:
            for _ in range(MAX_CALLS // MAX_CALLS_PER_KEY):
                me, ch = NodeIdentity.generate(os.urandom), bad.channel()
                for _ in range(MAX_CALLS_PER_KEY):
                    bad.call(ch, me, body=True)
            await bad.settled(server, len(bad.calls))
            await _honest_calls(server, tls, ep)
        finally:
            gate.set()
            await bad.close()
            await server.stop(0)

    _run(main())


def test_a_call_that_withholds_its_body_is_dropped_in_seconds() -> None:
    """The read deadline follows the declared length: 2 s for a 1-byte body
    (it was 30 s for a member, 5 s for a non-member)."""

    async def handler(_src: bytes, body: bytes) -> bytes:
        return b"ok"

    async def main() -> None:
        for member in (True, False):
            server, tls, ep = await _serve(handler, is_member=lambda _k, m=member: m)
            bad = Attacker(tls, ep)
            try:
                bad.call(bad.channel(), NodeIdentity.generate(os.urandom))
                await bad.settled(server, 1)  # admitted: the deadline runs from here
                t0 = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await asyncio.wait_for(asyncio.shield(bad.calls[0]), 4.5)
                assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert 1.0 < time.monotonic() - t0 < 3.5
                assert rpc_server.body_deadline(1, member) == pytest.approx(2.0, abs=0.01)
            finally:
                await bad.close()
                await server.stop(0)

    _run(main())


def _keys_to_fill(slots: Any) -> int:
    """How many callers, each taking all it may, it takes to leave no room for a new one."""
    owners = 0
    while slots.room("newcomer"):
        owners += 1
        while slots.room(owners):
            slots.enter(owners)
    return owners


def test_how_many_callers_it_takes_to_fill_each_pool() -> None:
    """The numbers docs/SECURITY.md gives: 22 member keys for the calls being
    handled, 44 for the datagram pool; the pool of calls awaiting a body gives
    way to a newcomer until 128 callers hold one each."""
    from smegmesh.daemon.rpc_slots import BodyWaits, Slots

    s = rpc_server
    assert _keys_to_fill(Slots(s.MAX_CALLS, MAX_CALLS_PER_KEY, s.RESERVED_CALLS, s.FEW_CALLS)) == 22
    dg = Slots(s.MAX_DATAGRAM_CALLS, MAX_CALLS_PER_KEY, s.RESERVED_DATAGRAM_CALLS, s.FEW_CALLS)
    assert _keys_to_fill(dg) == 44

    async def waits() -> None:
        w = BodyWaits(s.MAX_AWAITING, MAX_CALLS_PER_KEY)
        mine = [w.admit("a") for _ in range(MAX_CALLS_PER_KEY)]
        assert w.admit("a") is None  # per caller
        for k in range(s.MAX_AWAITING - MAX_CALLS_PER_KEY):
            assert w.admit(k) is not None
        assert w.n == s.MAX_AWAITING
        got = w.admit("b")  # full: "a", holding 16, gives way (its oldest call)
        assert got is not None and mine[0] is not None and mine[0].done()
        assert w.n == s.MAX_AWAITING and w.held("a") == MAX_CALLS_PER_KEY - 1
        w.leave("b", got)
        assert w.n == s.MAX_AWAITING - 1
        one_each = BodyWaits(4, MAX_CALLS_PER_KEY)
        for k in range(4):
            one_each.admit(k)
        assert one_each.admit("b") is None  # nobody holds two more than "b"

    _run(waits())


class FakeSources:
    """Gives each new connection the source address set last (loopback stands for
    the outsider's addresses: Python's gRPC cannot bind a source address)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = "2001:db8::1"
        self._by_port: dict[str, str] = {}
        monkeypatch.setattr(rpc_server, "parse_grpc_peer", self._parse)

    def _parse(self, peer: str) -> str:
        return self._by_port.setdefault(peer.rpartition(":")[2], self.now)


async def _outsider_then_joiner(
    monkeypatch: pytest.MonkeyPatch, sources: list[str], calls_each: int
) -> tuple[bytes | None, str | None, int]:
    """Bodyless calls of fresh keys from each of ``sources``, then a joiner's call:
    ``(its reply, its error, calls the outsider held)``."""
    fake = FakeSources(monkeypatch)

    async def handler(_src: bytes, body: bytes) -> bytes:
        return b"welcome"

    server, tls, ep = await _serve(handler, is_member=lambda _k: False)
    bad = Attacker(tls, ep)
    joiner = RpcClient(NodeIdentity.generate(os.urandom), timeout=3)
    try:
        for src in sources:
            fake.now, ch = src, bad.channel()
            for _ in range(calls_each):
                bad.call(ch, NodeIdentity.generate(os.urandom))  # any fresh key will do
            await bad.settled(server, len(bad.calls))
        held = server.calls_in_flight
        fake.now = "2001:db8:ffff:1::1"
        try:
            return await joiner.call(ep, tls.fingerprint, b"join"), None, held
        except RpcError as e:
            return None, str(e), held
    finally:
        await joiner.close()
        await bad.close()
        await server.stop(0)


def test_an_outsider_in_one_network_cannot_hold_every_stranger_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The review's attack: 4 addresses of one IPv6 /64, 2 calls each, held every
    non-member slot (8), and every joiner was refused. Now a /64 holds 2, and a
    /48 4 (8 /64s of one site, 2 calls each)."""
    one_64 = [f"2001:db8:0:1::{i:x}" for i in range(1, 5)]
    reply, err, held = _run(_outsider_then_joiner(monkeypatch, one_64, 2))
    assert reply == b"welcome", f"joiner refused: {err}"
    assert held == 2
    one_48 = [f"2001:db8:0:{i:x}::1" for i in range(1, 9)]
    reply, err, held = _run(_outsider_then_joiner(monkeypatch, one_48, 2))
    assert reply == b"welcome", f"joiner refused: {err}"
    assert held == 4


def test_an_outsider_holding_every_stranger_slot_gives_way_to_a_joiner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """16 sites, 2 bodyless calls each, hold all 32 places: a joiner from a
    network holding none takes the place of one of them."""
    sites = [f"2001:db8:{i:x}::1" for i in range(1, 17)]
    reply, err, held = _run(_outsider_then_joiner(monkeypatch, sites, 2))
    assert held == 32
    assert reply == b"welcome", f"joiner refused: {err}"


def test_source_networks() -> None:
    from smegmesh.daemon.rpc_slots import source_networks

    assert source_networks("2001:db8:1:2:3:4:5:6") == ("2001:db8:1:2::/64", "2001:db8:1::/48")
    assert source_networks("::ffff:192.0.2.7") == ("192.0.2.7", "192.0.2.7")
    assert source_networks("192.0.2.7") == ("192.0.2.7", "192.0.2.7")
    assert source_networks("fe80::1%eth0")[0] == "fe80::/64"
    assert source_networks("unix:/x") == ("unix:/x", "unix:/x")
