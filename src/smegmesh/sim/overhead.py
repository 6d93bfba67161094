"""What the simulator charges per message beyond its msgpack payload (issue 14).

The simulator counts message bodies exactly (``core.wire.encode``); a real
daemon's call also carries, on its TCP stream, TLS record headers and tags,
HTTP/2 frames and HPACK headers, gRPC's length prefix and trailers, and the
per-call authentication metadata (``x-smeg-key``, ``-sign``, ``-ts``,
``-hash``, ``-len``, ``-sig``: ~350 characters of hex, new on every call so
HPACK cannot index the values). With ``NetParams(wire_overhead=True)`` each
request is charged :data:`REQUEST_OVERHEAD_BYTES` and each reply
:data:`REPLY_OVERHEAD_BYTES` on top of its payload, TCP/IP headers included.

The figures are measured on real daemons by ``bench/wire_overhead_bench.py``
(stream bytes from ``ss -tin`` against the bodies counted by the daemons'
Prometheus metrics, warm channels; see docs/SCALE.md). Another branch
(``swarm14``) measures wire bytes inside the transport: update this table
from whichever measurement is current; it is the only place they live.
"""

from __future__ import annotations

__all__ = [
    "REPLY_OVERHEAD_BYTES",
    "REQUEST_OVERHEAD_BYTES",
    "TCPIP_BYTES_PER_SEGMENT",
]

#: IPv6 header (40) + TCP header with timestamps (32), per segment.
TCPIP_BYTES_PER_SEGMENT = 72
#: Stream bytes of one request beyond its body (HEADERS with the auth metadata,
#: DATA frame, gRPC prefix, TLS records), plus its segment and the ACK's.
REQUEST_OVERHEAD_BYTES = 470 + 2 * TCPIP_BYTES_PER_SEGMENT
#: Stream bytes of one reply beyond its body (HEADERS, DATA, trailers, TLS),
#: plus its segment.
REPLY_OVERHEAD_BYTES = 110 + TCPIP_BYTES_PER_SEGMENT
