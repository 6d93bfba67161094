"""The datagram path of node-to-node calls (issue 14): UDP beside the gRPC stream.

Small idempotent calls (``core/wire.DATAGRAM_REQUESTS``, flagged in the
protocol's codec table: a probe, an indirect probe, an in-sync digest pull, a
small push) go as one sealed datagram each way
(:mod:`smegmesh.daemon.dgram_wire`) to the same host and port number as the
gRPC server; everything else, and any call the datagrams do not answer in
time, goes over the stream. docs/TRANSPORT.md has the measurements,
docs/SECURITY.md the threat model.

* :class:`DatagramServer` (started by ``RpcServer.start`` when it is given
  ``private_key_for``) checks, in this order and all before any X25519 or
  decryption: the length, magic and kind; the receiver is one of ours; the
  sender is not the receiver and is a member (strangers never use datagrams);
  a token bucket per source address; the server's in-flight limits. Then the
  key, the AEAD, the clock window, the replay cache, the request type. The
  handler runs as a task; one reply goes back to the source address, sealed
  the other way. A reply too large or of another type: status "use the
  stream"; ``Refused``: status "refused".
* :class:`DatagramClient` (given to ``RpcClient``) sends a request, resends it
  once (new nonce, same id) after :data:`RESEND_AT` of the call's timeout and
  falls back to the stream after :data:`FALLBACK_AT`. An endpoint whose
  datagrams go unanswered while the stream answers (other than with a
  ``Refusal``) :data:`MISSES_FOR_STREAM_ONLY` times in a row is called over the
  stream only for :data:`STREAM_ONLY_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smegmesh.core.wire import DATAGRAM_REPLIES, DATAGRAM_REQUESTS, message_name
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.engineport import ANSWERED_FOR_STRANGERS, answer_shows_caller_known
from smegmesh.daemon.rpc_common import CLOCK_SKEW_MS, Refused, RpcError

if TYPE_CHECKING:
    from smegmesh.core.identity import NodeIdentity
    from smegmesh.daemon.rpc_server import RpcServer

log = logging.getLogger("smegmesh.daemon.transport")

#: Resend after this share of the call's timeout, fall back to the stream after that.
RESEND_AT = 0.4
FALLBACK_AT = 0.7
MISSES_FOR_STREAM_ONLY = 3
STREAM_ONLY_S = 600.0
MAX_STREAM_ONLY = 4096
MAX_PENDING = 1024
#: Token bucket per source address: requests per second, burst, addresses tracked.
BUCKET_RATE = 100.0
BUCKET_BURST = 200.0
MAX_BUCKETS = 4096


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _ip(addr: Any) -> str:
    """The sender's address, an IPv4-mapped IPv6 one written as IPv4."""
    host = str(addr[0]).split("%")[0]
    with contextlib.suppress(ValueError):
        a = ipaddress.ip_address(host)
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            return str(a.ipv4_mapped)
    return host


def _wire_len(n: int, ip: str) -> int:
    """Bytes of a datagram of ``n`` bytes on the wire, IP and UDP headers included."""
    return n + (dw.UDP_IPV6_HEADERS if ":" in ip else dw.UDP_IPV4_HEADERS)


@dataclass
class DatagramStats:
    """What the datagram path carried and refused (read by the metrics)."""

    #: (direction "in"/"out", message type) -> bytes on the wire incl. IP/UDP headers
    bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (direction, message type) -> datagrams
    datagrams: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: reason -> datagrams refused or dropped
    refused: Counter[str] = field(default_factory=Counter)
    #: calls made: answered by datagram, sent on to the stream ("use the stream",
    #: no answer in time), the endpoint stream-only
    fallbacks: Counter[str] = field(default_factory=Counter)

    def count(self, direction: str, kind: str, n: int, ip: str) -> None:
        self.bytes[direction, kind] += _wire_len(n, ip)
        self.datagrams[direction, kind] += 1


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = BUCKET_BURST
        self.at = now


class DatagramServer(asyncio.DatagramProtocol):
    """The server side: one UDP socket beside an :class:`RpcServer` (see the module doc)."""

    def __init__(
        self,
        server: RpcServer,
        private_key_for: Callable[[bytes], bytes | None],
        stats: DatagramStats | None = None,
    ) -> None:
        self._server = server
        self._private_key_for = private_key_for
        self.stats = stats or DatagramStats()
        self.keys = dw.KeyCache()
        self.replays = dw.ReplayCache(CLOCK_SKEW_MS)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for t in self._tasks:
            t.cancel()

    def _refuse(self, ip: str, reason: str, size: int = 0) -> None:
        self.stats.refused[reason] += 1
        if size:  # what was dropped still came in over the wire
            self.stats.bytes["in", "refused"] += _wire_len(size, ip)
        self._server.refusals.note(ip, f"datagram: {reason}")

    def _allow(self, ip: str) -> bool:
        now = time.monotonic()
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.popitem(last=False)
            b = self._buckets[ip] = _Bucket(now)
        else:
            self._buckets.move_to_end(ip)
            b.tokens = min(BUCKET_BURST, b.tokens + (now - b.at) * BUCKET_RATE)
            b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True

    def _admit(self, data: bytes, ip: str) -> tuple[dw.Header, bytes] | None:
        """The checks before any crypto; ``(header, our private key)`` or None (refused)."""
        try:
            h = dw.parse_header(data)
        except dw.DatagramError as e:
            self._refuse(ip, str(e), len(data))
            return None
        if h.kind != dw.REQUEST:
            self._refuse(ip, "not a request", len(data))
            return None
        priv = self._private_key_for(h.receiver)
        if priv is None:
            reason = "not for us"
        elif not self._server._is_member(h.sender):
            reason = "not a member"  # strangers never use datagrams
        elif not self._allow(ip):
            reason = "rate limited"
        elif not self._server._has_room(h.sender):
            reason = "too many calls"
        else:
            return h, priv
        self._refuse(ip, reason, len(data))
        return None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = _ip(addr)
        admitted = self._admit(data, ip)
        if admitted is None:
            return
        h, priv = admitted
        try:
            o = dw.open_sealed(self.keys, data, h, priv)
            self.replays.check(h.sender, h.nonce, o.ts_ms, _wall_ms())
        except dw.DatagramError as e:
            self._refuse(ip, str(e), len(data))
            return
        kind = message_name(o.body) or "malformed"
        self.stats.count("in", kind, len(data), ip)
        if kind not in DATAGRAM_REQUESTS:
            self._reply(o, priv, addr, ip, dw.USE_STREAM, b"")
            return
        self._server._enter(h.sender, ip, True)
        self._server.transport_calls["in", kind, "datagram"] += 1
        ctx = contextvars.copy_context()
        ctx.run(self._server._set_context, ip, h.receiver)
        task = asyncio.get_running_loop().create_task(self._handle(o, priv, addr, ip), context=ctx)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, o: dw.Opened, priv: bytes, addr: Any, ip: str) -> None:
        sender = o.header.sender
        try:
            reply = await self._server._handler(sender, o.body)
        except Refused as e:
            self._refuse(ip, str(e) or "refused")
            self._reply(o, priv, addr, ip, dw.REFUSED, b"")
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error handling a datagram from %s", ip)
            self._reply(o, priv, addr, ip, dw.REFUSED, b"")
            return
        finally:
            self._server._leave(sender, ip, True)
        if len(reply) > dw.MAX_BODY or message_name(reply) not in DATAGRAM_REPLIES:
            self._reply(o, priv, addr, ip, dw.USE_STREAM, b"")
        else:
            self._reply(o, priv, addr, ip, dw.OK, reply)

    def _reply(
        self, o: dw.Opened, priv: bytes, addr: Any, ip: str, status: int, body: bytes
    ) -> None:
        h = o.header
        data = dw.seal(
            self.keys,
            dw.REPLY,
            priv,
            h.receiver,
            h.sender,
            o.request_id,
            _wall_ms(),
            status,
            body,
            os.urandom,
        )
        self.stats.count("out", message_name(body) or "status", len(data), ip)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)


async def start_datagram_server(
    server: RpcServer,
    host: str,
    port: int,
    private_key_for: Callable[[bytes], bytes | None],
    stats: DatagramStats | None = None,
) -> DatagramServer | None:
    """Bind UDP ``host:port`` beside the gRPC server; None (and one warning) if it cannot."""
    loop = asyncio.get_running_loop()
    proto = DatagramServer(server, private_key_for, stats)
    try:
        await loop.create_datagram_endpoint(lambda: proto, local_addr=(host or "::", port))
    except OSError as e:
        log.warning(
            "cannot bind UDP %s port %d for datagrams (%s): node-to-node calls use the gRPC "
            "stream only",
            host,
            port,
            e.strerror or e,
        )
        return None
    return proto


@dataclass
class _Pending:
    future: asyncio.Future[tuple[int, bytes]]
    me: bytes  # our WireGuard key (the reply's receiver)
    to: bytes  # theirs (the reply's sender)


class DatagramClient(asyncio.DatagramProtocol):
    """The client side: one unconnected UDP socket per address family (lazily opened).

    May be shared by several ``RpcClient`` (a swarm's members); each call names
    the identity it speaks for.
    """

    def __init__(self, stats: DatagramStats | None = None) -> None:
        self.stats = stats or DatagramStats()
        self.keys = dw.KeyCache()
        self._pending: dict[int, _Pending] = {}
        self._privates: dict[bytes, list[Any]] = {}  # our key -> [private key, pending calls]
        self._sockets: dict[int, asyncio.DatagramTransport] = {}
        self._opening: dict[int, asyncio.Lock] = {}
        self._misses: OrderedDict[str, int] = OrderedDict()
        #: (endpoint, our key) that answered a datagram of ours: they know us
        self._known_to: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._stream_only: OrderedDict[str, float] = OrderedDict()

    # -- which calls ---------------------------------------------------------------
    def target(self, endpoint: str, body: bytes) -> tuple[str, int, int] | None:
        """``(ip, port, family)`` if this call goes by datagram, else None."""
        if len(body) > dw.MAX_BODY or len(self._pending) >= MAX_PENDING:
            return None
        if message_name(body) not in DATAGRAM_REQUESTS:
            return None
        until = self._stream_only.get(endpoint)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._stream_only[endpoint]
        from smegmesh.core.endpoint import split_host_port

        try:
            host, port = split_host_port(endpoint)
            a = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: the stream resolves it
        fam = 10 if a.version == 6 else 2  # AF_INET6, AF_INET
        return str(a), port, fam

    def _missed(self, endpoint: str) -> None:
        if endpoint in self._stream_only:
            return  # a call that was in flight when it was learnt
        n = self._misses.pop(endpoint, 0) + 1
        if n >= MISSES_FOR_STREAM_ONLY:
            if len(self._stream_only) >= MAX_STREAM_ONLY:
                self._stream_only.popitem(last=False)
            self._stream_only[endpoint] = time.monotonic() + STREAM_ONLY_S
            log.info("%s does not answer datagrams: stream only for %d s", endpoint, STREAM_ONLY_S)
            return
        if len(self._misses) >= MAX_STREAM_ONLY:
            self._misses.popitem(last=False)
        self._misses[endpoint] = n

    # -- the call --------------------------------------------------------------------
    async def call(
        self,
        target: tuple[str, int, int],
        endpoint: str,
        to: bytes,
        body: bytes,
        timeout: float,
        me: NodeIdentity,
        stream: Callable[[float], Awaitable[bytes]],
    ) -> bytes:
        """One call by datagram, falling back to ``stream(remaining timeout)``."""
        t0 = time.monotonic()
        kind = message_name(body) or "unknown"
        if kind in ANSWERED_FOR_STRANGERS and (endpoint, me.wg_public_key) not in self._known_to:
            # A request a node not yet known to the receiver may make (a Push of
            # its own record), and the datagram server drops a stranger's
            # datagrams unread: until the receiver has answered one of our
            # datagrams, it goes over the stream.
            return await stream(timeout)
        try:
            sock = await self._socket(target[2])
            self.keys.aead(me.wg_private_key, to, me.wg_public_key, to)  # a bad key: stream
        except (OSError, dw.DatagramError) as e:
            self.stats.fallbacks[f"no datagram ({type(e).__name__})"] += 1
            return await stream(timeout)
        rid = int.from_bytes(os.urandom(8), "big")
        while rid in self._pending:
            rid = int.from_bytes(os.urandom(8), "big")
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        mine = me.wg_public_key
        self._pending[rid] = _Pending(fut, mine, to)
        slot = self._privates.setdefault(mine, [me.wg_private_key, 0])
        slot[1] += 1
        try:
            for share in (RESEND_AT, FALLBACK_AT):
                data = dw.seal(
                    self.keys, dw.REQUEST, slot[0], mine, to, rid, _wall_ms(), 0, body, os.urandom
                )
                self.stats.count("out", kind, len(data), target[0])
                sock.sendto(data, target[:2])
                left = t0 + timeout * share - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), max(0.0, left))
                if fut.done():
                    break
        finally:
            del self._pending[rid]
            slot[1] -= 1
            if not slot[1]:
                del self._privates[mine]
        remaining = max(0.001, t0 + timeout - time.monotonic())
        if not fut.done():
            fut.cancel()
            self.stats.fallbacks["unanswered"] += 1
            reply = await stream(remaining)  # a failure (RpcError) teaches nothing
            # The stream answered where datagrams did not. A member that has not
            # heard of us yet drops our datagrams (strangers never use them): its
            # answer teaches only if it shows that it knows us.
            if answer_shows_caller_known(kind, message_name(reply)):
                self._missed(endpoint)
            return reply
        self._misses.pop(endpoint, None)
        self._known_to[endpoint, me.wg_public_key] = None
        self._known_to.move_to_end((endpoint, me.wg_public_key))
        if len(self._known_to) > MAX_STREAM_ONLY:
            self._known_to.popitem(last=False)
        status, reply = fut.result()
        if status == dw.USE_STREAM:
            self.stats.fallbacks["use the stream"] += 1
            return await stream(remaining)
        if status != dw.OK:
            raise RpcError(f"{endpoint}: refused (datagram)")
        self.stats.fallbacks["answered"] += 1
        return reply

    async def _socket(self, family: int) -> asyncio.DatagramTransport:
        s = self._sockets.get(family)
        if s is not None:
            return s
        lock = self._opening.setdefault(family, asyncio.Lock())
        async with lock:
            s = self._sockets.get(family)
            if s is None:
                loop = asyncio.get_running_loop()
                s, _ = await loop.create_datagram_endpoint(
                    lambda: self, local_addr=("::" if family == 10 else "0.0.0.0", 0)
                )
                self._sockets[family] = s
        return s

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = _ip(addr)
        try:
            h = dw.parse_header(data)
        except dw.DatagramError as e:
            self.stats.refused[str(e)] += 1
            return
        slot = self._privates.get(h.receiver)
        if h.kind != dw.REPLY or slot is None:
            self.stats.refused["not awaited"] += 1  # no crypto for what we did not ask
            return
        try:
            o = dw.open_sealed(self.keys, data, h, slot[0])
        except dw.DatagramError as e:
            self.stats.refused[str(e)] += 1
            return
        p = self._pending.get(o.request_id)
        if p is None or p.to != h.sender or p.me != h.receiver or p.future.done():
            self.stats.refused["not awaited"] += 1
            return
        if abs(_wall_ms() - o.ts_ms) > CLOCK_SKEW_MS:
            self.stats.refused["outside the clock window"] += 1
            return
        self.stats.count("in", message_name(o.body) or "status", len(data), ip)
        p.future.set_result((o.status, o.body))

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors of an unconnected socket: the call times out and falls back

    def close(self) -> None:
        for s in self._sockets.values():
            s.close()
        self._sockets.clear()
