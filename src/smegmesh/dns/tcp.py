"""DNS over TCP (RFC 7766): one message answered at a time per connection, every wait bounded.

Connections are capped in total and per client address; at a cap the idlest
connection is closed rather than the new one refused, so idle or slow clients,
however many, cannot keep a new client out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from smegmesh.dns.answer import DnsStats, Forward

__all__ = ["TCP_READ_LIMIT", "TcpClients"]

log = logging.getLogger("smegmesh.dns")

#: StreamReader buffer per TCP connection: reading pauses past twice this, which
#: bounds what a client pipelining queries can make us hold (one message at most
#: is being answered at a time per connection).
TCP_READ_LIMIT = 65536 + 2
#: Kernel send buffer per TCP connection (the kernel doubles it): a full reply fits.
_TCP_SNDBUF = 65536 + 2

_U16 = struct.Struct("!H")

Answer = Callable[..., "bytes | Forward | None"]
Forwarding = Callable[..., Awaitable["bytes | None"]]


class TcpClients:
    """The open TCP connections and their limits; :meth:`serve` handles one."""

    def __init__(
        self,
        answer: Answer,
        forward: Forwarding,
        stats: DnsStats,
        *,
        idle_timeout: float,
        message_timeout: float,
        max_clients: int,
        max_per_client: int,
    ) -> None:
        self.answer = answer
        self.forward = forward
        self.stats = stats
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.max_clients = max(1, max_clients)
        self.max_per_client = max(1, max_per_client)
        self.conns: dict[asyncio.Task[Any], _TcpConn] = {}
        self._per_host: dict[str, int] = {}

    def _admit(self, host: str) -> None:
        """Make room for one more connection from ``host`` (RFC 7766, section 6.2.2).

        At the per-client or the total cap the idlest connection (of that client,
        or of all) is closed rather than the new one refused: idle or slow
        clients, however many, cannot keep a new client out. Connections waiting
        for an answer count as less idle than any waiting for a query.
        """
        conns = self.conns
        if self._per_host.get(host, 0) >= self.max_per_client:
            pool = [c for c in conns.values() if c.host == host]
        elif len(conns) >= self.max_clients:
            pool = list(conns.values())
        else:
            return
        victim = min(pool, key=lambda c: (c.busy, c.last))
        log.debug("dns: TCP connection cap reached, closing the idlest (from %s)", victim.host)
        self._forget(victim)
        victim.writer.transport.abort()
        victim.task.cancel()

    def _forget(self, conn: _TcpConn) -> None:
        if self.conns.pop(conn.task, None) is None:
            return
        left = self._per_host[conn.host] - 1
        if left:
            self._per_host[conn.host] = left
        else:
            del self._per_host[conn.host]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: one message answered at a time, every wait bounded.

        Idle (no message started) for ``idle_timeout``, a message started but
        not complete within ``message_timeout``, or a reply the client does
        not read within ``idle_timeout``: the connection is closed.
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
        self._admit(host)
        conn = _TcpConn(task, writer, host, time.monotonic())
        self.conns[task] = conn
        self._per_host[host] = self._per_host.get(host, 0) + 1
        abort = False
        try:
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    first = await reader.readexactly(1)
                conn.busy = True
                async with asyncio.timeout(self.message_timeout):
                    (length,) = _U16.unpack(first + await reader.readexactly(1))
                    if length == 0:
                        break
                    data = await reader.readexactly(length)
                out = self.answer(data, tcp=True)
                if isinstance(out, Forward):
                    out = await self.forward(out.data, tcp=True)
                if out is not None:
                    self.stats.count_answer(out)
                    writer.write(_U16.pack(len(out)) + out)
                    abort = True
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.drain()
                    abort = False
                conn.busy = False
                conn.last = time.monotonic()
                await asyncio.sleep(0)  # pipelined messages: the others' turn between them
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            abort = True
        except Exception:  # pragma: no cover - defence in depth
            log.debug("dns: TCP connection error", exc_info=True)
        finally:
            self._forget(conn)
            if abort:
                # A reply the client will not read: drop it, do not wait to flush it.
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.wait_closed()


@dataclass(slots=True, eq=False)
class _TcpConn:
    task: asyncio.Task[Any]
    writer: asyncio.StreamWriter
    host: str
    last: float  # monotonic time of the last complete exchange (or of the accept)
    busy: bool = False
