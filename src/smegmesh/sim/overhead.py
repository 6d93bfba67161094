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
    "CALL_STREAM_OVERHEAD_BYTES",
    "REPLY_OVERHEAD_BYTES",
    "REQUEST_OVERHEAD_BYTES",
    "TCPIP_BYTES_PER_SEGMENT",
]

#: IPv6 header (40) + TCP header with timestamps (32), per segment.
TCPIP_BYTES_PER_SEGMENT = 72
#: Measured: stream bytes of one call (request + reply) beyond the two bodies,
#: 549 B (bench/wire_overhead_bench.py, 3 smegd, 313 calls: Ping, Push, SyncStart).
CALL_STREAM_OVERHEAD_BYTES = 549
#: Of which the reply (estimated from its frame layout: HEADERS with indexed
#: :status / content-type, DATA 9 + gRPC prefix 5, trailers, TLS 1.3 records of
#: 22 bytes each); the rest is the request's (HEADERS with the ~350-character
#: auth metadata literals, DATA, TLS).
_REPLY_STREAM_BYTES = 100
#: One request: its stream overhead plus its segment and the ACK's.
REQUEST_OVERHEAD_BYTES = (
    CALL_STREAM_OVERHEAD_BYTES - _REPLY_STREAM_BYTES + 2 * TCPIP_BYTES_PER_SEGMENT
)
#: One reply: its stream overhead plus its segment.
REPLY_OVERHEAD_BYTES = _REPLY_STREAM_BYTES + TCPIP_BYTES_PER_SEGMENT
