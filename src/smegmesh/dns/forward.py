"""Relaying queries for names outside our zones to the configured forwarder.

UDP first, then TCP if the forwarder truncates a reply for a TCP client; the
reply must match our query (fresh random id, same question) or the client gets
SERVFAIL, as on a timeout. At most ``max_forwards`` queries are in flight:
beyond that a query fails at once instead of queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode

from smegmesh.dns.answer import OUR_PAYLOAD, DnsStats, formerr, to_wire

__all__ = ["Upstream"]

log = logging.getLogger("smegmesh.dns")

_U16 = struct.Struct("!H")
_TC = 0x0200
_RA = 0x0080


class _BadReply(Exception):
    """The forwarder's reply does not answer our query."""


class Upstream:
    """The forwarder at ``address`` (host, port), with a bound on queries in flight."""

    def __init__(
        self, address: tuple[str, int], *, timeout: float, max_forwards: int, stats: DnsStats
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.stats = stats
        self._slots = asyncio.Semaphore(max_forwards)

    async def forward(self, data: bytes, *, tcp: bool) -> bytes | None:
        """Relay ``data`` to the forwarder; SERVFAIL on timeout or a bad reply."""
        qid = _U16.unpack_from(data)[0]
        upstream_id = secrets.randbits(16)
        wire = _U16.pack(upstream_id) + data[2:]
        self.stats.forwarded += 1
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return formerr(qid, _U16.unpack_from(data, 2)[0])
        reply: bytes | None = None
        if self._slots.locked():
            log.debug("dns: too many queries in flight to the forwarder")
        else:
            async with self._slots:
                try:
                    reply = await asyncio.wait_for(
                        self._exchange(wire, query, upstream_id, tcp), self.timeout
                    )
                except (TimeoutError, OSError, _BadReply, EOFError) as exc:
                    log.debug("dns: forwarder %s failed: %r", self.address, exc)
        if reply is None:
            self.stats.forward_failed += 1
            response = dns.message.make_response(
                query, recursion_available=True, our_payload=OUR_PAYLOAD
            )
            response.set_rcode(dns.rcode.SERVFAIL)
            return to_wire(response, query, tcp, self.stats)
        # Through us the client got recursion: say so even if upstream did not.
        flags = _U16.unpack_from(reply, 2)[0] | _RA
        return _U16.pack(qid) + _U16.pack(flags) + reply[4:]

    async def _exchange(
        self, wire: bytes, query: dns.message.Message, upstream_id: int, tcp: bool
    ) -> bytes:
        host, port = self.address
        reply = await _udp_exchange(wire, host, port)
        if not _matches(reply, query, upstream_id):
            raise _BadReply("forwarder reply does not match the query")
        if tcp and _U16.unpack_from(reply, 2)[0] & _TC:
            reply = await _tcp_exchange(wire, host, port)
            if not _matches(reply, query, upstream_id):
                raise _BadReply("forwarder reply does not match the query")
        return reply


def _matches(reply: bytes, query: dns.message.Message, upstream_id: int) -> bool:
    try:
        msg = dns.message.from_wire(reply)
    except Exception:
        return False
    if msg.id != upstream_id or not msg.flags & dns.flags.QR:
        return False
    return msg.question == query.question


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _udp_exchange(wire: bytes, host: str, port: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(_OneShot, remote_addr=(host, port))
    try:
        transport.sendto(wire)
        return await proto.reply
    finally:
        transport.close()


async def _tcp_exchange(wire: bytes, host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_U16.pack(len(wire)) + wire)
        await writer.drain()
        (length,) = _U16.unpack(await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
