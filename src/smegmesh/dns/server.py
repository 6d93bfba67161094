"""Asyncio DNS server (UDP and TCP) answering for ``smeg.`` from a :class:`NameView`.

The sockets and their lifecycle; what to answer is :mod:`smegmesh.dns.answer`
(no I/O), forwarding is :mod:`smegmesh.dns.forward`, the TCP connection limits
are :mod:`smegmesh.dns.tcp`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from smegmesh.core.endpoint import split_host_port
from smegmesh.dns.answer import Answerer, DnsStats, Forward, ViewSource
from smegmesh.dns.forward import Upstream
from smegmesh.dns.names import DEFAULT_TTL, NameView
from smegmesh.dns.tcp import TCP_READ_LIMIT, TcpClients

__all__ = ["DnsServer", "DnsStats", "parse_hostport"]

log = logging.getLogger("smegmesh.dns")

Forwarder = tuple[str, int]


def parse_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``v6`` or ``host`` (then ``default_port``)."""
    return split_host_port(text, default_port)


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
                assert isinstance(out, Forward)
                self.server._spawn(self.server._forward_udp_reply(out.data, self, addr))

    def send(self, data: bytes, addr: Any) -> None:
        if self.sock.fileno() == -1:
            return
        self.server.stats.count_answer(data)
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
        if isinstance(forwarder, str):
            forwarder = parse_hostport(forwarder)
        self.forwarder: Forwarder | None = forwarder
        self.stats = DnsStats()
        self.answerer = Answerer(
            view_provider,
            ttl=ttl,
            forwarding=forwarder is not None,
            cache_size=cache_size,
            stats=self.stats,
        )
        #: Answer one DNS message: response bytes, a :class:`Forward` marker, or None (drop).
        self.answer = self.answerer.answer
        self.upstream = (
            Upstream(
                forwarder, timeout=forward_timeout, max_forwards=max_forwards, stats=self.stats
            )
            if forwarder is not None
            else None
        )
        self.tcp = TcpClients(
            self.answer,
            self.forward,
            self.stats,
            idle_timeout=tcp_idle_timeout,
            message_timeout=tcp_message_timeout,
            max_clients=max_tcp_clients,
            max_per_client=max_tcp_per_client,
        )
        self._udp: list[_UdpListener] = []
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.addresses: list[tuple[str, int]] = []

    @property
    def ttl(self) -> int:
        return self.answerer.ttl

    @property
    def max_tcp_clients(self) -> int:
        return self.tcp.max_clients

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
            self.tcp.serve,
            [str(sa[0]) for _, sa in hosts],
            port,
            reuse_address=True,
            limit=TCP_READ_LIMIT,
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
        for task in [*self.tcp.conns, *self._tasks]:
            task.cancel()
        for listener in self._udp:
            listener.close()
        self._udp.clear()
        self._tcp = None
        if tcp is not None:
            tcp.close()
        pending = [*self.tcp.conns, *self._tasks]
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

    # -- view ---------------------------------------------------------------

    def update(self, view: NameView) -> None:
        """Atomically switch to ``view`` (visible to the next query).

        Call it from the event loop's thread (e.g. from the daemon's state-change
        callback), like every other method.
        """
        self.answerer.update(view)

    @property
    def view(self) -> NameView:
        return self.answerer.view

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
        assert self.upstream is not None
        return await self.upstream.forward(data, tcp=tcp)
