"""The datagram path of RpcClient/RpcServer on loopback (issue 14, daemon/rpc_dgram.py):
answered by datagram, "use the stream", fallback and learning, refusals, bind failure."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dgram_helpers import key_ids
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.messages import Ack, Ping, Refusal
from smegmesh.core.sync import Push, SyncEnd, SyncStart
from smegmesh.core.wire import encode
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.rpc_dgram_client import MISSES_FOR_STREAM_ONLY, DatagramClient
from smegmesh.daemon.transport import (
    Refused,
    RpcClient,
    RpcError,
    RpcServer,
    TlsIdentity,
    callee_key,
    caller_address,
)

ME = NodeIdentity.from_seed(b"m" * 32)
OTHER = NodeIdentity.from_seed(b"o" * 32)  # a second identity the same client speaks for
SRV = NodeIdentity.from_seed(b"s" * 32)
PING = encode(Ping("mesh", 1))
ACK = encode(Ack("mesh", 1))

Handler = Callable[[bytes, bytes], Awaitable[bytes]]


async def _pair(handler: Handler, *, datagrams: bool = True) -> tuple[RpcServer, RpcClient, str]:
    server = RpcServer(
        TlsIdentity.generate(),
        handler,
        datagram_keys=key_ids(SRV, ME, OTHER) if datagrams else None,
    )
    port = await server.start("::1", 0)
    client = RpcClient(ME, timeout=2.0, datagrams=DatagramClient())
    return server, client, f"[::1]:{port}"


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_small_call_is_answered_by_datagram_for_any_identity() -> None:
    seen: list[tuple[bytes, str | None, bytes | None]] = []

    async def handler(src: bytes, body: bytes) -> bytes:
        seen.append((src, caller_address.get(), callee_key.get()))
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            assert await client.call(ep, server._fp, PING, to=SRV.wg_public_key) == ACK
            got = await client.call(ep, server._fp, PING, to=SRV.wg_public_key, identity=OTHER)
            assert got == ACK
            assert client.transport_calls == {("out", "Ping", "datagram"): 2}
            assert server.transport_calls == {("in", "Ping", "datagram"): 2}
            assert client.open_channels == 0  # no TLS connection at all
            assert [s[0] for s in seen] == [ME.wg_public_key, OTHER.wg_public_key]
            assert seen[0][1:] == ("::1", SRV.wg_public_key)
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.bytes["out", "Ping"] == 2 * (len(PING) + dw.OVERHEAD + 48)
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_large_reply_and_other_types_go_over_the_stream() -> None:
    big = encode(SyncEnd("m" * 60, 1)) + b""  # a valid reply type...

    async def handler(_src: bytes, body: bytes) -> bytes:
        if body == PING:
            return b"\x00" * (dw.MAX_BODY + 1)  # ...but one too large for a datagram
        return big

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            t0 = time.monotonic()
            reply = await client.call(ep, server._fp, PING, to=SRV.wg_public_key)
            assert len(reply) == dw.MAX_BODY + 1
            assert time.monotonic() - t0 < 1.5  # "use the stream": at once, not after a timeout
            assert client.datagrams.stats.fallbacks["use the stream"] == 1  # type: ignore[union-attr]
            assert server.transport_calls[("in", "Ping", "stream")] == 1
            # Not a whitelisted request (a join, a sync step...): straight to the stream.
            await client.call(ep, server._fp, b"not a message", to=SRV.wg_public_key)
            start = encode(SyncStart("mesh", 1, b"s" * 8, b"d" * 16, 3))
            assert await client.call(ep, server._fp, start, to=SRV.wg_public_key) == big
            assert client.transport_calls[("out", "SyncStart", "datagram")] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_refused_by_datagram_is_an_error() -> None:
    async def handler(_src: bytes, _body: bytes) -> bytes:
        raise Refused("not you")

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            with pytest.raises(RpcError, match="refused"):
                await client.call(ep, server._fp, PING, to=SRV.wg_public_key)
            assert server.datagrams is not None
            assert server.datagrams.stats.refused["not you"] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_server_without_datagrams_is_reached_over_the_stream_then_learnt() -> None:
    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler, datagrams=False)
        try:
            for _ in range(MISSES_FOR_STREAM_ONLY):
                t0 = time.monotonic()
                assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == ACK
                assert time.monotonic() - t0 >= 0.7  # waited for datagrams first
            assert client.datagrams.stats.fallbacks["unanswered"] == 3  # type: ignore[union-attr]
            t0 = time.monotonic()
            assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == ACK
            assert time.monotonic() - t0 < 0.7  # stream only now: no wait
            assert client.datagrams.stats.fallbacks["unanswered"] == 3  # type: ignore[union-attr]
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_udp_port_taken_means_stream_only_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        udp.bind(("::1", 0))
        port = udp.getsockname()[1]
        server = RpcServer(TlsIdentity.generate(), handler, datagram_keys=key_ids(SRV, ME))
        try:
            assert await server.start("::1", port) == port  # gRPC still serves
            assert server.datagrams is None
        finally:
            await server.stop(0)
            udp.close()

    with caplog.at_level(logging.WARNING, "smegmesh.daemon.transport"):
        _run(main())
    warnings = [r for r in caplog.records if "datagrams" in r.getMessage()]
    assert len(warnings) == 1 and "stream only" in warnings[0].getMessage()


def test_any_port_is_one_free_for_both_tcp_and_udp(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked for port 0, gRPC gets a free TCP port whose UDP twin may be taken
    (CI saw it: a test's server came up without datagrams). Another port is tried."""
    from smegmesh.daemon import rpc_dgram

    real, taken = rpc_dgram.open_udp, []

    async def first_taken(factory: Any, addr: tuple[str, int]) -> Any:
        if not taken:
            taken.append(addr[1])
            raise OSError(98, "Address already in use")
        return await real(factory, addr)

    monkeypatch.setattr(rpc_dgram, "open_udp", first_taken)

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        tls = TlsIdentity.generate()
        server = RpcServer(tls, handler, datagram_keys=key_ids(SRV, ME))
        try:
            port = await server.start("::1", 0)
            assert server.datagrams is not None and port != taken[0]
            client = RpcClient(ME, timeout=2.0, datagrams=DatagramClient())
            try:
                await client.call(f"[::1]:{port}", tls.fingerprint, PING, to=SRV.wg_public_key)
                assert client.transport_calls["out", "Ping", "datagram"] == 1
            finally:
                await client.close()
        finally:
            await server.stop(0)

    with caplog.at_level(logging.WARNING, "smegmesh.daemon.transport"):
        _run(main())
    assert not [r for r in caplog.records if "datagrams" in r.getMessage()]


def test_a_node_that_answered_datagrams_and_falls_silent_is_a_failed_call() -> None:
    """No stream fallback for an endpoint known to speak datagrams: under load a
    fallback would open a TLS connection to a node already too slow to answer."""

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == ACK
            assert server.datagrams is not None
            server.datagrams.close()  # the node stops answering datagrams (the stream still does)
            t0 = time.monotonic()
            with pytest.raises(RpcError, match="no answer by datagram"):
                await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key)
            # failed where the fallback used to start: a dead node is found as
            # soon as before, when the fallback's connection was refused at once
            assert 0.65 <= time.monotonic() - t0 < 0.95
            assert ("in", "Ping", "stream") not in server.transport_calls
            assert client.open_channels == 0
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.fallbacks["unanswered (speaks datagrams)"] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_a_member_that_does_not_know_us_yet_says_so_and_we_use_the_stream() -> None:
    """A node just admitted is no member yet for the others: their notice sends its
    call to the stream at once, instead of after the datagram timeout."""

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server = RpcServer(
            TlsIdentity.generate(),
            handler,
            is_member=lambda k: k != ME.wg_public_key,
            datagram_keys=key_ids(SRV),  # ME is no member (yet)
        )
        port = await server.start("::1", 0)
        client = RpcClient(ME, timeout=2.0, datagrams=DatagramClient())
        try:
            reply = await client.call(f"[::1]:{port}", server._fp, PING, to=SRV.wg_public_key)
            assert reply == ACK  # answered on the stream
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.fallbacks["unknown to them"] == 1
            assert st.fallbacks["unanswered"] == 0  # no wait for the timeout
            assert server.datagrams is not None
            assert server.datagrams.keys.derivations == 0  # the notice costs no crypto
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_stream_refusals_do_not_teach_that_an_endpoint_is_stream_only() -> None:
    """A member that does not know us yet drops our datagrams and refuses on the stream:
    that is no sign that it does not speak datagrams (engineport.answer_shows_caller_known)."""
    refusal = encode(Refusal("mesh"))

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return refusal

    async def main() -> None:
        server, client, ep = await _pair(handler, datagrams=False)
        try:
            for _ in range(MISSES_FOR_STREAM_ONLY + 1):
                assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == refusal
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.fallbacks["unanswered"] == MISSES_FOR_STREAM_ONLY + 1  # tried every time
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_a_call_with_no_time_left_for_a_tls_connection_does_not_fall_back() -> None:
    """A relayed probe (0.4 s) unanswered by datagram has 0.12 s left: not enough to
    make a TLS connection to a busy node, and both ends would pay for the
    handshake (seen at 60 real daemons on 2 cores: a thousand stream calls per
    daemon ending in DEADLINE_EXCEEDED)."""

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler, datagrams=False)
        try:
            with pytest.raises(RpcError, match="no answer by datagram"):
                await client.call(ep, server._fp, PING, 0.4, to=SRV.wg_public_key)
            assert ("in", "Ping", "stream") not in server.transport_calls
            assert client.open_channels == 0
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.fallbacks["unanswered (no time for the stream)"] == 1
            # a call with time to spare still falls back (and learns stream-only ends)
            assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == ACK
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


BIG_PING = encode(Ping("m" * 3000, 1))  # 3,008 bytes: three request parts


def test_a_request_too_large_for_one_datagram_goes_in_parts_not_over_tls() -> None:
    """A record with a deep admission chain or a prune (1.1-4.5 KB) used to open a
    TLS connection; at 100 real daemons those handshakes were the change tail."""
    seen: list[bytes] = []

    async def handler(src: bytes, body: bytes) -> bytes:
        seen.append(body)
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            assert await client.call(ep, server._fp, BIG_PING, to=SRV.wg_public_key) == ACK
            assert seen == [BIG_PING]
            assert client.transport_calls == {("out", "Ping", "datagram"): 1}
            assert client.open_channels == 0 and client.attempts == 0  # no TLS at all
            assert server.datagrams is not None
            assert server.datagrams.stats.datagrams["in", "part"] == 3
            assert len(server.datagrams.reassembly) == 0
            too_big = encode(Ping("m" * dw.MAX_REQUEST, 1))
            assert await client.call(ep, server._fp, too_big, to=SRV.wg_public_key) == ACK
            assert client.transport_calls[("out", "Ping", "stream")] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_a_node_that_takes_no_request_parts_is_reached_over_the_stream() -> None:
    """A node that speaks datagrams but drops request parts (an older version)
    still gets the call: no answer to parts falls back, even to a known endpoint."""

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            assert await client.call(ep, server._fp, PING, 1.0, to=SRV.wg_public_key) == ACK
            assert server.datagrams is not None

            def refuse(*_a: Any) -> bytes | None:
                raise dw.DatagramError("not a smegmesh datagram")

            server.datagrams.reassembly.add = refuse  # type: ignore[method-assign,assignment]
            assert await client.call(ep, server._fp, BIG_PING, 1.0, to=SRV.wg_public_key) == ACK
            assert server.transport_calls[("in", "Ping", "stream")] == 1
            st = client.datagrams.stats  # type: ignore[union-attr]
            assert st.fallbacks["unanswered"] == 1
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_datagram_sockets_get_a_receive_buffer_for_a_starved_second() -> None:
    """The kernel's default (208 KB, ~90 datagrams) overflowed at 100 real daemons
    on 2 cores: lost probes, then a prune storm. Both ends ask for 4 MB (root:
    beyond rmem_max)."""
    from smegmesh.daemon.rpc_dgram import RCVBUF

    async def handler(_src: bytes, _body: bytes) -> bytes:
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        try:
            assert await client.call(ep, server._fp, PING, to=SRV.wg_public_key) == ACK
            assert server.datagrams is not None and server.datagrams._transport is not None
            client_socks = client.datagrams._sockets.values()  # type: ignore[union-attr]
            for t in (server.datagrams._transport, *client_socks):
                sock = t.get_extra_info("socket")
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= RCVBUF
        finally:
            await client.close()
            await server.stop(0)

    _run(main())


def test_a_push_that_asks_for_no_answer_is_run_and_nothing_comes_back() -> None:
    """A push along the tree (``Call.unanswered``): one datagram, its handler
    runs, no reply is sealed or sent. Only to an endpoint that answered a
    datagram lately, only a push, and a stranger gets no notice for one."""
    seen: list[bytes] = []
    got = asyncio.Event()
    push = encode(Push("mesh", ()))

    async def handler(src: bytes, body: bytes) -> bytes:
        seen.append(body)
        if body == push:
            got.set()
        return ACK

    async def main() -> None:
        server, client, ep = await _pair(handler)
        dg, dgs = client.datagrams, server.datagrams
        assert dg is not None and dgs is not None
        try:
            # not known to answer datagrams yet: the caller makes an ordinary call
            assert not await dg.send_unanswered(ep, SRV.wg_public_key, push, ME)
            assert await client.call(ep, server._fp, PING, to=SRV.wg_public_key) == ACK
            assert not await dg.send_unanswered(ep, SRV.wg_public_key, PING, ME)  # not a push
            big = encode(Push("m" * (dw.MAX_BODY + 10), ()))
            assert not await dg.send_unanswered(ep, SRV.wg_public_key, big, ME)
            replies_before = dgs.stats.datagrams["out", "Ack"]
            assert await dg.send_unanswered(ep, SRV.wg_public_key, push, ME)
            await asyncio.wait_for(got.wait(), 5)
            await asyncio.sleep(0.2)  # a reply would be on its way by now
            assert seen == [PING, push]
            assert server.transport_calls[("in", "Push", "unanswered")] == 1
            assert dgs.stats.datagrams["out", "Ack"] == replies_before
            assert dg.stats.fallbacks["sent unanswered"] == 1
            # a stranger's unanswered request: refused, and no notice sent back
            stranger = NodeIdentity.from_seed(b"x" * 32)
            notices = dgs.stats.datagrams["out", "notice"]
            assert await dg.send_unanswered(ep, SRV.wg_public_key, push, stranger)
            await asyncio.sleep(0.2)
            assert dgs.stats.datagrams["out", "notice"] == notices
            assert seen == [PING, push]
        finally:
            await client.close()
            await server.stop(0)

    _run(main())
