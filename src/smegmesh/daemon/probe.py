"""ICMPv6 echo over the overlay: is a direct session alive both ways, and its round trip.

Used by :mod:`smegmesh.daemon.direct` (docs/NAT.md). One raw ICMPv6 socket per
daemon (needs root or CAP_NET_RAW, like WireGuard itself; without it
:attr:`Prober.usable` is false and sessions are judged by received bytes only).
The kernel of the other node answers the echo, so there is no listener to
attack. The socket passes only echo replies (ICMP6_FILTER) with our
identifier; a reply counts only for a request we sent to that very address
(at most ``MAX_PENDING`` outstanding), and WireGuard lets a member send only
from its own /128, so a member can vouch for nothing but its own session.
Reading never blocks the event loop (non-blocking socket, ``add_reader``, at
most ``MAX_READS`` datagrams per wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Collection

log = logging.getLogger(__name__)

__all__ = ["MAX_PENDING", "Prober"]

ECHO_REQUEST = 128
ECHO_REPLY = 129
ICMP6_FILTER = 1  # <netinet/icmp6.h>, level IPPROTO_ICMPV6
MAX_PENDING = 1024
MAX_READS = 64
#: Smoothing of the round trip (like TCP's SRTT): new = old + (sample - old) / 8.
SRTT_GAIN = 0.125


def _reply_only_filter() -> bytes:
    """ICMP6_FILTER bitmap: a set bit blocks the type; pass echo replies only."""
    words = [0xFFFFFFFF] * 8
    words[ECHO_REPLY >> 5] &= ~(1 << (ECHO_REPLY & 31))
    return struct.pack("=8I", *words)


def _norm(address: str) -> str:
    return str(ipaddress.IPv6Address(address.split("%", 1)[0]))


class Prober:
    """Echo requests to overlay addresses; when each last answered, and the smoothed RTT."""

    def __init__(self) -> None:
        self.ident = random.getrandbits(16)
        self._seq = 0
        self._pending: OrderedDict[int, tuple[str, int]] = OrderedDict()
        #: address -> wall-clock ms of the last reply (the clock of DirectTable)
        self.last_reply_ms: dict[str, int] = {}
        #: address -> smoothed round trip, ms
        self.srtt_ms: dict[str, float] = {}
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def usable(self) -> bool:
        return self.sock is not None

    def open(self) -> bool:
        """Open the socket and start reading (on the running loop); False without privilege."""
        if self.sock is not None:
            return True
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        except OSError as e:
            log.info("no ICMPv6 socket (%s): direct sessions judged by received bytes only", e)
            return False
        try:
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _reply_only_filter())
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(s.fileno(), self._readable)
        except (OSError, RuntimeError) as e:
            log.info("ICMPv6 socket unusable (%s)", e)
            s.close()
            return False
        self.sock = s
        return True

    def close(self) -> None:
        if self.sock is None:
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None

    def send(self, address: str) -> None:
        """One echo request to ``address`` (errors, e.g. no route yet, are ignored)."""
        if self.sock is None:
            return
        try:
            addr = _norm(address)
        except ValueError:
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self._pending[self._seq] = (addr, time.monotonic_ns())
        self._pending.move_to_end(self._seq)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        packet = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, self.ident, self._seq) + b"smeg-dir"
        with contextlib.suppress(OSError):  # checksum: filled in by the kernel
            self.sock.sendto(packet, (addr, 0))

    def _readable(self) -> None:
        if self.sock is None:
            return
        for _ in range(MAX_READS):
            try:
                data, src = self.sock.recvfrom(512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.on_packet(data, src[0])

    def on_packet(self, data: bytes, source: str) -> None:
        """Account one received ICMPv6 message (anything but our echo replies is ignored)."""
        if len(data) < 8:
            return
        typ, _code, _sum, ident, seq = struct.unpack("!BBHHH", data[:8])
        if typ != ECHO_REPLY or ident != self.ident:
            return
        sent = self._pending.get(seq)
        try:
            src = _norm(source)
        except ValueError:
            return
        if sent is None or sent[0] != src:
            return
        del self._pending[seq]
        rtt = (time.monotonic_ns() - sent[1]) / 1e6
        self.last_reply_ms[src] = int(time.time() * 1000)
        old = self.srtt_ms.get(src)
        self.srtt_ms[src] = rtt if old is None else old + (rtt - old) * SRTT_GAIN

    def reply_ms(self, address: str) -> int:
        try:
            return self.last_reply_ms.get(_norm(address), 0)
        except ValueError:
            return 0

    def rtt_ms(self, address: str) -> float | None:
        try:
            v = self.srtt_ms.get(_norm(address))
        except ValueError:
            return None
        return None if v is None else round(v, 3)

    def keep(self, addresses: Collection[str]) -> None:
        """Forget the addresses no longer probed (bounded state)."""
        keep = set()
        for a in addresses:
            with contextlib.suppress(ValueError):
                keep.add(_norm(a))
        for d in (self.last_reply_ms, self.srtt_ms):
            for a in [a for a in d if a not in keep]:
                del d[a]
