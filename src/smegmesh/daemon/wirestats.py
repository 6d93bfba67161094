"""Wire-level byte accounting: what the node-to-node transport puts on the socket.

gRPC's C core owns the sockets, so the bytes are read from the kernel: for
each TCP socket of this process, ``TCP_INFO`` gives ``tcpi_bytes_acked``
(bytes sent and acknowledged) and ``tcpi_bytes_received``. These are TCP
payload bytes: TLS records, HTTP/2 frames and headers (HPACK), gRPC framing
and the message; TCP/IP headers are not in them (``segs_out``/``segs_in`` are
counted, 52 bytes each on IPv4 with timestamps, 72 on IPv6).

:class:`WireStats` samples every socket of the process except those of the
local listeners named in ``exclude_ports`` (the API, the metrics endpoint):
the node-to-node connections both ways, and the short certificate fetches
that precede a new channel. A socket's counts are added as deltas since its
previous sample; a socket closed between two samples loses what it carried
since the last one (the bench samples every second; connections live at least
``CHANNEL_IDLE_S``), so the totals are a lower bound. The one kind of
connection that lives for milliseconds, the certificate fetch before a new
channel, is counted by the client itself (``RpcClient.fetch_wire``, read
before it closes) and added by the metrics.

Cost: one ``readlink`` and one ``getsockopt`` per open descriptor per sample;
:func:`run_sampler` samples every :data:`SAMPLE_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

#: ``struct tcp_info``: u64 bytes_acked at 120, bytes_received at 128, u32 segs_out, segs_in at 136
_TCPI_OFFSET = 120
_TCPI_LEN = 144
_TCPI = struct.Struct("=QQII")
SAMPLE_INTERVAL_S = 2.0
#: sockets tracked at once (a hostile flood of connections does not grow our table beyond it)
MAX_TRACKED = 4096


@dataclass
class WireTotals:
    tx: int = 0  # bytes sent (acked by the peer)
    rx: int = 0  # bytes received
    segs_out: int = 0
    segs_in: int = 0
    sockets: int = 0  # TCP sockets counted in the last sample


@dataclass
class WireStats:
    """Cumulative TCP payload bytes of this process's sockets (see the module doc)."""

    exclude_ports: set[int] = field(default_factory=set)
    totals: WireTotals = field(default_factory=WireTotals)
    #: socket inode -> last (bytes_acked, bytes_received, segs_out, segs_in)
    _last: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)

    def sample(self) -> WireTotals:
        seen: dict[str, tuple[int, int, int, int]] = {}
        t = self.totals
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return t
        for name in fds:
            if len(seen) >= MAX_TRACKED:
                break
            fd = int(name)
            try:
                link = os.readlink(f"/proc/self/fd/{name}")
            except OSError:
                continue
            if not link.startswith("socket:"):
                continue
            info = _tcp_info(fd, self.exclude_ports)
            if info is None:
                continue
            seen[link] = info
            old = self._last.get(link, (0, 0, 0, 0))
            t.tx += max(0, info[0] - old[0])
            t.rx += max(0, info[1] - old[1])
            t.segs_out += max(0, info[2] - old[2])
            t.segs_in += max(0, info[3] - old[3])
        self._last = seen
        t.sockets = len(seen)
        return t


def _tcp_info(fd: int, exclude_ports: set[int]) -> tuple[int, int, int, int] | None:
    """(bytes_acked, bytes_received, segs_out, segs_in) of a connected TCP socket, else None."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        try:
            local = s.getsockname()[1]
            s.getpeername()  # listening or unconnected sockets raise
        except OSError:
            return None
        if local in exclude_ports:
            return None
        raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_LEN)
        if len(raw) < _TCPI_LEN:
            return None
        acked, received, segs_out, segs_in = _TCPI.unpack_from(raw, _TCPI_OFFSET)
        # An active opener's bytes_acked also counts its SYN: one byte per connection.
        return acked, received, segs_out, segs_in
    except OSError:
        return None
    finally:
        s.detach()  # the descriptor belongs to whoever opened it


def socket_bytes(sock: object) -> tuple[int, int]:
    """(sent and acked, received) TCP payload bytes of an open socket; (0, 0) if unknown."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_LEN)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return 0, 0
    if len(raw) < _TCPI_LEN:
        return 0, 0
    acked, received, _o, _i = _TCPI.unpack_from(raw, _TCPI_OFFSET)
    return int(acked), int(received)  # acked: +1 for the SYN of a connection we opened


async def run_sampler(stats: WireStats, interval_s: float = SAMPLE_INTERVAL_S) -> None:
    """Sample forever (cancel to stop); the collector also samples on each scrape."""
    while True:
        with contextlib.suppress(Exception):
            stats.sample()
        await asyncio.sleep(interval_s)
