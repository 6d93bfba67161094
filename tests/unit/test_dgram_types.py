"""Which messages go by datagram is a fact of the protocol (``core/wire.DATAGRAM_REQUESTS``
and ``DATAGRAM_REPLIES``, flagged in the codec table): the datagram server runs and
carries exactly those, and the simulator's overhead model charges exactly those."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from dgram_helpers import counter, key_ids
from smegmesh.core.codec import Codec
from smegmesh.core.identity import NodeIdentity
from smegmesh.core.wire import DATAGRAM_REPLIES, DATAGRAM_REQUESTS, PROTOCOL, WIRE_VERSION
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.rpc_dgram import DatagramServer
from smegmesh.daemon.rpc_server import RpcServer
from smegmesh.daemon.rpc_tls import TlsIdentity
from smegmesh.sim import overhead

A = NodeIdentity.from_seed(b"a" * 32)
B = NodeIdentity.from_seed(b"b" * 32)
CODECS = PROTOCOL.codecs()


def _envelope(c: Codec) -> bytes:
    """A message of ``c``'s type as far as its envelope goes (all the transport reads)."""
    out: bytes = msgpack.packb([WIRE_VERSION, c.code, []], use_bin_type=True)
    return out


class _Sent:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, _addr: object) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


def _exchange(request: bytes, reply: bytes) -> tuple[bool, int, bytes]:
    """One datagram request to a server answering ``reply``: (handler ran, status, body)."""
    ran: list[bytes] = []

    async def handler(_src: bytes, body: bytes) -> bytes:
        ran.append(body)
        return reply

    async def main() -> tuple[bool, int, bytes]:
        rpc = RpcServer(TlsIdentity.generate(), handler)
        srv = DatagramServer(rpc, key_ids(B, A))
        out = _Sent()
        srv.connection_made(out)  # type: ignore[arg-type]
        data = dw.seal(
            dw.KeyCache(),
            dw.REQUEST,
            A.wg_private_key,
            A.wg_public_key,
            B.wg_public_key,
            7,
            int(time.time() * 1000),
            0,
            request,
            counter(),
        )
        srv.datagram_received(data, ("192.0.2.9", 5000))
        while srv._tasks:
            await asyncio.gather(*srv._tasks)
        (sent,) = out.sent
        h = dw.parse_header(sent, int(time.time() * 1000))
        o = dw.open_sealed(
            dw.KeyCache(), sent, h, A.wg_private_key, B.wg_public_key, A.wg_public_key
        )
        return bool(ran), o.status, o.body

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_the_protocol_flags_the_small_idempotent_messages() -> None:
    assert {"Ping", "PingReq", "Push", "Offer", "SyncStart", "SyncStep"} == DATAGRAM_REQUESTS
    assert {"Ack", "SyncEnd", "SyncStep", "Refusal", "Want"} == DATAGRAM_REPLIES


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.cls.__name__)
def test_the_datagram_server_runs_exactly_the_flagged_requests(codec: Codec) -> None:
    ack = next(c for c in CODECS if c.cls.__name__ == "Ack")
    ran, status, body = _exchange(_envelope(codec), _envelope(ack))
    assert ran is codec.dgram_request
    assert (status, body) == ((dw.OK, _envelope(ack)) if ran else (dw.USE_STREAM, b""))


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.cls.__name__)
def test_the_datagram_server_carries_exactly_the_flagged_replies(codec: Codec) -> None:
    ping = next(c for c in CODECS if c.cls.__name__ == "Ping")
    ran, status, body = _exchange(_envelope(ping), _envelope(codec))
    assert ran
    assert (status, body) == (
        (dw.OK, _envelope(codec)) if codec.dgram_reply else (dw.USE_STREAM, b"")
    )


def test_the_overhead_model_charges_a_datagram_for_exactly_the_flagged_types() -> None:
    for c in CODECS:
        name = c.cls.__name__
        assert overhead.request_bytes("datagram", name, 10)[1] is c.dgram_request, name
        dgram_reply = overhead.reply_bytes(name, 10, 10, True) == overhead.DGRAM_OVERHEAD_BYTES
        assert dgram_reply is c.dgram_reply, name
