"""A UDP endpoint that reads what is queued, not one datagram per loop turn.

asyncio's datagram transport on the selector loop (CPython 3.11 to 3.13:
``_SelectorDatagramTransport._read_ready``) reads **one** datagram each time
the socket is reported readable, i.e. one per event-loop iteration. An
iteration runs every callback that is ready, so on a busy loop (thousands of
tasks after a burst of calls) the socket is read a few times a second while
hundreds of datagrams a second arrive: the receive queue fills, requests are
answered seconds after their callers gave up, and the unanswered calls become
suspicions. Seen in the swarm (500 members per process: 6 MB queued, 2
datagrams read in 5 s) and a contributor to the 100-daemon storms
(docs/CALIBRATION.md).

:class:`DrainingDatagramTransport` is the same interface (``sendto``,
``close``, ``get_extra_info``; the protocol's ``datagram_received`` and
``error_received``) over a non-blocking socket watched with
``loop.add_reader``; each time the socket is readable it reads up to
:data:`READ_BUDGET` datagrams, so intake keeps up with arrivals while other
file descriptors still get their turn. Sends are not queued: a datagram the
kernel will not take at once (send buffer full) is dropped and counted, as
the network might drop it; callers resend.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["READ_BUDGET", "DrainingDatagramTransport", "open_udp"]

#: Datagrams read per readiness callback (at most 64 x 64 KB = 4 MB of work per turn).
READ_BUDGET = 64
MAX_DATAGRAM = 65_535


class DrainingDatagramTransport(asyncio.DatagramTransport):
    """See the module doc. Made by :func:`open_udp`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._closing = False
        #: datagrams the kernel would not take at once (dropped)
        self.send_drops = 0
        loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        for _ in range(READ_BUDGET):
            if self._closing:
                return
            try:
                data, addr = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error reported on the socket
                self._protocol.error_received(exc)
                return
            self._protocol.datagram_received(data, addr)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError) as exc:
            self.send_drops += 1
            self._protocol.error_received(exc)  # the protocol counts it (a metric)
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


async def open_udp(
    protocol_factory: Callable[[], asyncio.DatagramProtocol],
    local_addr: tuple[str, int],
) -> tuple[DrainingDatagramTransport, asyncio.DatagramProtocol]:
    """Bind ``local_addr`` (an IPv4 or IPv6 host and a port, 0 for any) for UDP.

    ``"::"`` takes IPv4 too (IPv4-mapped), as asyncio's endpoint does on Linux.
    Raises ``OSError`` if the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    host, port = local_addr
    infos = await loop.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    protocol = protocol_factory()
    transport = DrainingDatagramTransport(loop, sock, protocol)
    protocol.connection_made(transport)
    return transport, protocol
