"""Asyncio DNS server (UDP and TCP) answering for ``smeg.`` from a :class:`NameView`.

Hot path: a plain query (one question, class IN, uncompressed name, optional
well-formed OPT record) is parsed by hand and answered from a per-view cache of
rendered wire bodies keyed by (lower-cased qname, qtype); the response is the
client's id and flags, the client's own question bytes (so case is echoed
exactly), then the cached answer/authority bytes, whose compression pointers
only depend on the question's length, which the key fixes. Anything unusual is
handed to dnspython (:func:`dns.message.from_wire`), which also renders cache
misses. Malformed input never raises out of a handler: FORMERR when a header
with an id is there, silence otherwise (and never an answer to a response).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from smegmesh.core.endpoint import split_host_port
from smegmesh.dns.names import DEFAULT_TTL, Answer, NameView, Record, resolve

__all__ = ["DnsServer", "DnsStats", "parse_hostport"]

log = logging.getLogger("smegmesh.dns")

#: StreamReader buffer per TCP connection: reading pauses past twice this, which
#: bounds what a client pipelining queries can make us hold (one message at most
#: is being answered at a time per connection).
_TCP_READ_LIMIT = 65536 + 2
#: Kernel send buffer per TCP connection (the kernel doubles it): a full reply fits.
_TCP_SNDBUF = 65536 + 2

_HDR = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_QTAIL = struct.Struct("!HH")
_OPT = struct.Struct("!HHIH")  # type, payload size, ttl (ext-rcode, version, flags), rdlen

_QR = 0x8000
_OPCODE = 0x7800
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_DO = 0x8000  # in the OPT ttl's low 16 bits
_RCODE_FORMERR = 1
_RCODE_SERVFAIL = 2

UDP_PLAIN_LIMIT = 512
#: EDNS payload size we advertise and honour at most (the DNS flag day 2020 value).
OUR_PAYLOAD = 1232
_OPT_NO_DO = b"\x00" + _OPT.pack(41, OUR_PAYLOAD, 0, 0)
_OPT_DO = b"\x00" + _OPT.pack(41, OUR_PAYLOAD, _DO, 0)

# Question types the fast path leaves to _answer_parsed (refused or FORMERR there).
_SPECIAL_QTYPES = frozenset({41, 249, 250, 251, 252})

ViewSource = NameView | Callable[[], NameView]
Forwarder = tuple[str, int]


@dataclass(slots=True)
class DnsStats:
    """Counters, mostly for tests and debugging (the hot path only bumps ``cached``)."""

    cached: int = 0
    rendered: int = 0
    slow: int = 0
    malformed: int = 0
    dropped: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    truncated: int = 0
    send_failed: int = 0
    #: answers sent, by response code (index = RCODE, 0..15): one list bump per answer
    rcodes: list[int] = field(default_factory=lambda: [0] * 16)


@dataclass(frozen=True, slots=True)
class _Cached:
    flags: int  # QR|AA|rcode, without the client's RD
    ancount: int
    nscount: int
    body: bytes  # answer + authority sections, after the question


class _BadReply(Exception):
    """The forwarder's reply does not answer our query."""


class _Forward:
    """Marker: the query must be sent to the forwarder."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``v6`` or ``host`` (then ``default_port``)."""
    return split_host_port(text, default_port)


def _formerr(qid: int, flags: int) -> bytes:
    return _HDR.pack(qid, _QR | (flags & (_OPCODE | _RD)) | _RCODE_FORMERR, 0, 0, 0, 0)


def _rrsets(records: tuple[Record, ...]) -> list[dns.rrset.RRset]:
    groups: dict[tuple[str, int], list[Record]] = {}
    for rec in records:
        groups.setdefault((rec.name, rec.rtype), []).append(rec)
    out = []
    for (name, rtype), recs in groups.items():
        out.append(
            dns.rrset.from_text_list(
                name,
                recs[0].ttl,
                dns.rdataclass.IN,
                dns.rdatatype.RdataType.make(rtype),
                [r.data for r in recs],
            )
        )
    return out


class _UdpListener:
    """A non-blocking UDP socket read straight from the event loop's selector.

    asyncio's datagram transport reads one datagram per loop iteration; under
    load that per-iteration overhead dominates (the answer itself takes about a
    microsecond), so this drains up to ``_BATCH`` datagrams per wake-up and
    answers each with a direct ``sendto``. A reply that does not fit in the
    socket's send buffer is dropped (the client retries), as a UDP server may.
    """

    _BATCH = 64

    def __init__(self, server: DnsServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self.sock
        answer = self.server.answer
        for _ in range(self._BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dns: UDP receive error: %s", exc)
                return
            try:
                out = answer(data, tcp=False)
            except Exception:  # pragma: no cover - defence in depth
                log.debug("dns: unexpected error on UDP query from %s", addr, exc_info=True)
                continue
            if out is None:
                continue
            if type(out) is bytes:
                self.send(out, addr)
            else:
                assert isinstance(out, _Forward)
                self.server._spawn(self.server._forward_udp_reply(out.data, self, addr))

    def send(self, data: bytes, addr: Any) -> None:
        if self.sock.fileno() == -1:
            return
        if len(data) > 3:
            self.server.stats.rcodes[data[3] & 0x0F] += 1
        try:
            self.sock.sendto(data, addr)
        except OSError as exc:
            self.server.stats.send_failed += 1
            log.debug("dns: UDP send to %s failed: %s", addr, exc)

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class DnsServer:
    """DNS server for the ``smeg.`` zone.

    ``view_provider`` is either a :class:`NameView` (swap it with :meth:`update`
    when mesh state changes: the cheaper way) or a zero-argument callable
    returning the current view, called once per query (the rendered-answer
    cache is dropped when it returns a different object). ``forwarder``
    (``(host, port)`` or ``"host:port"``) receives queries for names outside
    our zones, which are refused otherwise.
    """

    def __init__(
        self,
        view_provider: ViewSource,
        *,
        ttl: int = DEFAULT_TTL,
        forwarder: Forwarder | str | None = None,
        forward_timeout: float = 2.0,
        tcp_idle_timeout: float = 5.0,
        max_tcp_clients: int = 256,
        max_tcp_per_client: int = 32,
        tcp_message_timeout: float = 2.0,
        max_forwards: int = 256,
        cache_size: int = 65536,
    ) -> None:
        if isinstance(view_provider, NameView):
            self._view: NameView = view_provider
            self._provider: Callable[[], NameView] | None = None
        else:
            self._provider = view_provider
            self._view = view_provider()
        self.ttl = int(ttl)
        if isinstance(forwarder, str):
            forwarder = parse_hostport(forwarder)
        self.forwarder: Forwarder | None = forwarder
        self.forward_timeout = forward_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_clients = max(1, max_tcp_clients)
        self.max_tcp_per_client = max(1, max_tcp_per_client)
        self.tcp_message_timeout = tcp_message_timeout
        self.cache_size = cache_size
        self.stats = DnsStats()
        self._cache: dict[bytes, _Cached] = {}
        self._forward_slots = asyncio.Semaphore(max_forwards)
        self._udp: list[_UdpListener] = []
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: dict[asyncio.Task[Any], _TcpConn] = {}
        self._tcp_per_host: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.addresses: list[tuple[str, int]] = []

    # -- lifecycle ----------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (useful after ``start(host, 0)``)."""
        if not self.addresses:
            raise RuntimeError("DNS server not started")
        return self.addresses[0][1]

    async def start(self, host: str = "127.0.0.1", port: int = 5353) -> None:
        """Bind UDP and TCP on ``host`` (IPv4 or IPv6 literal or a name) and ``port``.

        Port 0 picks a free port, the same for UDP and TCP.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
        hosts: list[tuple[int, Any]] = []
        for family, _, _, _, sockaddr in infos:
            entry = (int(family), sockaddr)
            if entry not in hosts:
                hosts.append(entry)
        last_error: OSError | None = None
        for _ in range(1 if port else 20):
            try:
                await self._bind(hosts, port)
                break
            except OSError as exc:
                last_error = exc
                await self._unbind()
        else:
            assert last_error is not None
            raise last_error
        log.info("dns: serving smeg. on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def _bind(self, hosts: list[tuple[int, Any]], port: int) -> None:
        for family, sockaddr in hosts:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError:
                sock.close()
                raise
            self._udp.append(_UdpListener(self, sock))
            port = int(sock.getsockname()[1])
            self.addresses.append((str(sockaddr[0]), port))
        self._tcp = await asyncio.start_server(
            self._tcp_client,
            [str(sa[0]) for _, sa in hosts],
            port,
            reuse_address=True,
            limit=_TCP_READ_LIMIT,
        )

    async def _unbind(self) -> None:
        for listener in self._udp:
            listener.close()
        self._udp.clear()
        self.addresses.clear()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None

    async def close(self) -> None:
        """Stop listening and drop open TCP connections and pending forwards."""
        tcp = self._tcp
        for task in [*self._tcp_clients, *self._tasks]:
            task.cancel()
        for listener in self._udp:
            listener.close()
        self._udp.clear()
        self._tcp = None
        if tcp is not None:
            tcp.close()
        pending = [*self._tcp_clients, *self._tasks]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if tcp is not None:
            await tcp.wait_closed()
        self.addresses.clear()

    async def __aenter__(self) -> DnsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- view ---------------------------------------------------------------

    def update(self, view: NameView) -> None:
        """Atomically switch to ``view`` (visible to the next query).

        Call it from the event loop's thread (e.g. from the daemon's state-change
        callback), like every other method.
        """
        self._provider = None
        self._view = view
        self._cache = {}

    @property
    def view(self) -> NameView:
        return self._current_view()

    def _current_view(self) -> NameView:
        provider = self._provider
        if provider is not None:
            view = provider()
            if view is not self._view:
                self._view = view
                self._cache = {}
        return self._view

    # -- query handling -----------------------------------------------------

    def answer(self, data: bytes, *, tcp: bool) -> bytes | _Forward | None:
        """Answer one DNS message: response bytes, a forward marker, or None (drop)."""
        if self._provider is not None:
            self._current_view()
        n = len(data)
        if n < 17:
            return self._slow(data, tcp)
        qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
        if flags & (_QR | _OPCODE) or qd != 1 or an or ns or ar > 1:
            return self._slow(data, tcp)
        # Question name: uncompressed labels only.
        i = 12
        ln = data[i]
        while ln:
            if ln > 63:
                return self._slow(data, tcp)
            i += ln + 1
            if i >= n:
                return self._slow(data, tcp)
            ln = data[i]
        nend = i + 1
        qend = nend + 4
        if qend > n or nend - 12 > 255 or data[nend + 2 : qend] != b"\x00\x01":
            return self._slow(data, tcp)
        if ar:
            # One OPT record, version 0, well-formed options, nothing after it.
            if n < qend + 11 or data[qend] != 0:
                return self._slow(data, tcp)
            otype, payload, ottl, rdlen = _OPT.unpack_from(data, qend + 1)
            j = qend + 11
            if otype != 41 or ottl & 0x00FF0000 or j + rdlen != n:
                return self._slow(data, tcp)
            while j < n:
                if j + 4 > n:
                    return self._slow(data, tcp)
                j += 4 + _U16.unpack_from(data, j + 2)[0]
            if j != n:
                return self._slow(data, tcp)
            opt = _OPT_DO if ottl & _DO else _OPT_NO_DO
            limit = 65535 if tcp else max(UDP_PLAIN_LIMIT, min(payload, OUR_PAYLOAD))
        elif qend != n:
            return self._slow(data, tcp)
        else:
            opt = b""
            limit = 65535 if tcp else UDP_PLAIN_LIMIT
        key = data[12:nend].lower() + data[nend : nend + 2]
        cached = self._cache.get(key)
        if cached is None:
            if _U16.unpack_from(data, nend)[0] in _SPECIAL_QTYPES:
                return self._slow(data, tcp)
            cached = self._render_miss(data, nend)
            if cached is None:
                return _Forward(data)
        else:
            self.stats.cached += 1
        question = data[12:qend]
        out = (
            _HDR.pack(
                qid,
                cached.flags | (flags & _RD),
                1,
                cached.ancount,
                cached.nscount,
                1 if opt else 0,
            )
            + question
            + cached.body
            + opt
        )
        if len(out) > limit:
            self.stats.truncated += 1
            out = (
                _HDR.pack(qid, cached.flags | _TC | (flags & _RD), 1, 0, 0, 1 if opt else 0)
                + question
                + opt
            )
        return out

    def _render_miss(self, data: bytes, nend: int) -> _Cached | None:
        """Resolve and render a fast-path query not in the cache (None: forward it)."""
        labels = []
        i = 12
        ln = data[i]
        while ln:
            labels.append(data[i + 1 : i + 1 + ln])
            i += ln + 1
            ln = data[i]
        labels.append(b"")
        qname = dns.name.Name(labels)
        qtype = _U16.unpack_from(data, nend)[0]
        ans = resolve(self._view, qname.to_text(), qtype, ttl=self.ttl)
        if not ans.authoritative and self.forwarder is not None:
            return None
        msg = dns.message.Message(id=0)
        msg.flags = dns.flags.QR | (dns.flags.AA if ans.authoritative else 0)
        if self.forwarder is not None:
            msg.flags |= dns.flags.RA
        msg.set_rcode(dns.rcode.Rcode(ans.rcode))
        msg.question = [dns.rrset.RRset(qname, dns.rdataclass.IN, qtype)]
        msg.answer = _rrsets(ans.answer)
        msg.authority = _rrsets(ans.authority)
        wire = msg.to_wire()
        _, rflags, _, ancount, nscount, _ = _HDR.unpack_from(wire)
        body = wire[nend + 4 :]
        cached = _Cached(rflags, ancount, nscount, body)
        self.stats.rendered += 1
        cache = self._cache
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[data[12:nend].lower() + data[nend : nend + 2]] = cached
        return cached

    def _slow(self, data: bytes, tcp: bool) -> bytes | _Forward | None:
        """Anything the fast path declined: parse with dnspython, validate, answer."""
        self.stats.slow += 1
        if len(data) < 12:
            self.stats.dropped += 1
            log.debug("dns: dropping %d-byte message (shorter than a header)", len(data))
            return None
        qid, flags = struct.unpack_from("!HH", data)
        if flags & _QR:
            self.stats.dropped += 1
            log.debug("dns: dropping a response (QR set)")
            return None
        try:
            query = dns.message.from_wire(data, ignore_trailing=False)
        except Exception as exc:
            self.stats.malformed += 1
            log.debug("dns: malformed query (%s): FORMERR", exc)
            return _formerr(qid, flags)
        try:
            return self._answer_parsed(query, data, tcp)
        except Exception as exc:
            self.stats.malformed += 1
            log.debug("dns: cannot answer query (%s): FORMERR", exc, exc_info=True)
            return _formerr(qid, flags)

    def _answer_parsed(
        self, query: dns.message.Message, data: bytes, tcp: bool
    ) -> bytes | _Forward:
        response = dns.message.make_response(
            query, recursion_available=self.forwarder is not None, our_payload=OUR_PAYLOAD
        )
        if query.edns >= 0:
            response.ednsflags |= query.ednsflags & dns.flags.DO
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return self._to_wire(response, query, tcp)
        if len(query.question) != 1 or query.answer or query.authority:
            response.set_rcode(dns.rcode.FORMERR)
            self.stats.malformed += 1
            return self._to_wire(response, query, tcp)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return self._to_wire(response, query, tcp)
        q = query.question[0]
        if q.rdtype in (dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY):
            response.set_rcode(dns.rcode.FORMERR)
            return self._to_wire(response, query, tcp)
        if q.rdclass != dns.rdataclass.IN or q.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            response.set_rcode(dns.rcode.REFUSED)
            return self._to_wire(response, query, tcp)
        ans: Answer = resolve(self._view, q.name.to_text(), int(q.rdtype), ttl=self.ttl)
        if not ans.authoritative and self.forwarder is not None:
            return _Forward(data)
        if ans.authoritative:
            response.flags |= dns.flags.AA
        response.set_rcode(dns.rcode.Rcode(ans.rcode))
        response.answer = _rrsets(ans.answer)
        response.authority = _rrsets(ans.authority)
        return self._to_wire(response, query, tcp)

    def _to_wire(
        self, response: dns.message.Message, query: dns.message.Message, tcp: bool
    ) -> bytes:
        if tcp:
            limit = 65535
        elif query.edns >= 0:
            limit = max(UDP_PLAIN_LIMIT, min(query.payload, OUR_PAYLOAD))
        else:
            limit = UDP_PLAIN_LIMIT
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            self.stats.truncated += 1
            response.answer = []
            response.authority = []
            response.additional = []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    # -- forwarding ---------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_udp_reply(self, data: bytes, listener: _UdpListener, addr: Any) -> None:
        out = await self.forward(data, tcp=False)
        if out is not None:
            listener.send(out, addr)

    async def forward(self, data: bytes, *, tcp: bool) -> bytes | None:
        """Relay ``data`` to the forwarder; SERVFAIL on timeout or a bad reply."""
        assert self.forwarder is not None
        qid = _U16.unpack_from(data)[0]
        upstream_id = secrets.randbits(16)
        wire = _U16.pack(upstream_id) + data[2:]
        self.stats.forwarded += 1
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return _formerr(qid, _U16.unpack_from(data, 2)[0])
        reply: bytes | None = None
        if self._forward_slots.locked():
            log.debug("dns: too many queries in flight to the forwarder")
        else:
            async with self._forward_slots:
                try:
                    reply = await asyncio.wait_for(
                        self._upstream(wire, query, upstream_id, tcp), self.forward_timeout
                    )
                except (TimeoutError, OSError, _BadReply, EOFError) as exc:
                    log.debug("dns: forwarder %s failed: %r", self.forwarder, exc)
        if reply is None:
            self.stats.forward_failed += 1
            response = dns.message.make_response(
                query, recursion_available=True, our_payload=OUR_PAYLOAD
            )
            response.set_rcode(dns.rcode.SERVFAIL)
            return self._to_wire(response, query, tcp)
        # Through us the client got recursion: say so even if upstream did not.
        flags = _U16.unpack_from(reply, 2)[0] | _RA
        return _U16.pack(qid) + _U16.pack(flags) + reply[4:]

    async def _upstream(
        self, wire: bytes, query: dns.message.Message, upstream_id: int, tcp: bool
    ) -> bytes:
        assert self.forwarder is not None
        host, port = self.forwarder
        reply = await _udp_exchange(wire, host, port)
        if not _matches(reply, query, upstream_id):
            raise _BadReply("forwarder reply does not match the query")
        if tcp and _U16.unpack_from(reply, 2)[0] & _TC:
            reply = await _tcp_exchange(wire, host, port)
            if not _matches(reply, query, upstream_id):
                raise _BadReply("forwarder reply does not match the query")
        return reply

    # -- TCP ----------------------------------------------------------------

    def _tcp_admit(self, host: str) -> None:
        """Make room for one more connection from ``host`` (RFC 7766, section 6.2.2).

        At the per-client or the total cap the idlest connection (of that client,
        or of all) is closed rather than the new one refused: idle or slow
        clients, however many, cannot keep a new client out. Connections waiting
        for an answer count as less idle than any waiting for a query.
        """
        conns = self._tcp_clients
        if self._tcp_per_host.get(host, 0) >= self.max_tcp_per_client:
            pool = [c for c in conns.values() if c.host == host]
        elif len(conns) >= self.max_tcp_clients:
            pool = list(conns.values())
        else:
            return
        victim = min(pool, key=lambda c: (c.busy, c.last))
        log.debug("dns: TCP connection cap reached, closing the idlest (from %s)", victim.host)
        self._tcp_forget(victim)
        victim.writer.transport.abort()
        victim.task.cancel()

    def _tcp_forget(self, conn: _TcpConn) -> None:
        if self._tcp_clients.pop(conn.task, None) is None:
            return
        left = self._tcp_per_host[conn.host] - 1
        if left:
            self._tcp_per_host[conn.host] = left
        else:
            del self._tcp_per_host[conn.host]

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: one message answered at a time, every wait bounded.

        Idle (no message started) for ``tcp_idle_timeout``, a message started but
        not complete within ``tcp_message_timeout``, or a reply the client does
        not read within ``tcp_idle_timeout``: the connection is closed.
        """
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always run as a task by asyncio
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # A fixed send buffer (no autotuning to megabytes) bounds what the kernel
            # holds for a client that does not read its replies.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _TCP_SNDBUF)
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._tcp_admit(host)
        conn = _TcpConn(task, writer, host, time.monotonic())
        self._tcp_clients[task] = conn
        self._tcp_per_host[host] = self._tcp_per_host.get(host, 0) + 1
        abort = False
        try:
            while True:
                async with asyncio.timeout(self.tcp_idle_timeout):
                    first = await reader.readexactly(1)
                conn.busy = True
                async with asyncio.timeout(self.tcp_message_timeout):
                    (length,) = _U16.unpack(first + await reader.readexactly(1))
                    if length == 0:
                        break
                    data = await reader.readexactly(length)
                out = self.answer(data, tcp=True)
                if isinstance(out, _Forward):
                    out = await self.forward(out.data, tcp=True)
                if out is not None:
                    if len(out) > 3:
                        self.stats.rcodes[out[3] & 0x0F] += 1
                    writer.write(_U16.pack(len(out)) + out)
                    abort = True
                    async with asyncio.timeout(self.tcp_idle_timeout):
                        await writer.drain()
                    abort = False
                conn.busy = False
                conn.last = time.monotonic()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            abort = True
        except Exception:  # pragma: no cover - defence in depth
            log.debug("dns: TCP connection error", exc_info=True)
        finally:
            self._tcp_forget(conn)
            if abort:
                # A reply the client will not read: drop it, do not wait to flush it.
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.tcp_idle_timeout):
                        await writer.wait_closed()


@dataclass(slots=True, eq=False)
class _TcpConn:
    task: asyncio.Task[Any]
    writer: asyncio.StreamWriter
    host: str
    last: float  # monotonic time of the last complete exchange (or of the accept)
    busy: bool = False


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
