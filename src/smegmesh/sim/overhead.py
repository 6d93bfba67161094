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

Two transport models (``--wire-overhead stream|datagram``): *stream* charges
every message the stream figures above; *datagram* models the datagram path
of branch ``dgram`` (``daemon/rpc_dgram.py``): a request of a type in
:data:`smegmesh.core.wire.DATAGRAM_REQUESTS` (the protocol's own set, which
the transport reads too) with a body of at most :data:`DGRAM_MAX_BODY` goes as
one datagram (up to :data:`DGRAM_MAX_REQUEST` as 2-4 parts), and so does its
reply if it is of a type in
:data:`~smegmesh.core.wire.DATAGRAM_REPLIES` and small enough; any other reply to a datagram
request is a "use the stream" datagram (empty body) and the call is repeated
over the stream (request and reply charged the stream overhead again).
Everything else goes over the stream. Both models charge connection set-up
as the daemon's channel pool incurs it (:class:`ChannelPool`): a call over the
stream to a member with no warm channel opens one, :data:`CONNECT_BYTES` (TCP
and TLS handshakes, HTTP/2 preface and settings, the first call's unindexed
headers). A real smegd under churn showed why it matters: its sync sessions
over the stream each opened a channel, 9 % of its bytes, which the model left
out (docs/SCALE.md, "One smegd under churn").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from smegmesh.core.wire import DATAGRAM_REPLIES, DATAGRAM_REQUESTS

__all__ = [
    "CALL_STREAM_OVERHEAD_BYTES",
    "CHANNEL_IDLE_MS",
    "CONNECT_BYTES",
    "DGRAM_MAX_BODY",
    "DGRAM_MAX_REQUEST",
    "DGRAM_OVERHEAD_BYTES",
    "DGRAM_PART_CHUNK",
    "MAX_CHANNELS",
    "MODELS",
    "REPLY_OVERHEAD_BYTES",
    "REQUEST_OVERHEAD_BYTES",
    "TCPIP_BYTES_PER_SEGMENT",
    "ChannelPool",
    "model_of",
    "reply_bytes",
    "reply_falls_back",
    "request_bytes",
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


# -- the datagram path (branch dgram, daemon/dgram_wire.py and rpc_dgram.py) -------------
# 38 B of overhead per datagram (version 3 of the layout, daemon/dgram_wire.py;
# version 2 had 51 B, version 1 113 B, measured by the transport's own counters as a 25 B Ping
# going as 138 B of UDP payload: bench/member_scale_bench.py, docs/TRANSPORT.md
# "design C"), and the 28 B of IPv4 + UDP headers the counters add per
# datagram. A test (tests/unit/test_overhead_model.py) keeps these equal to
# dgram_wire's.

#: Header 18 B (magic 1, kind 1 (a reply's status too), sender key id 4,
#: receiver key id 4, nonce 8 holding the send time) + AEAD tag 16 + inner
#: header 4 (the request id) = 38 B (``dgram_wire.OVERHEAD``), plus IPv4 (20)
#: + UDP (8) headers (``dgram_wire.UDP_IPV4_HEADERS``).
DGRAM_OVERHEAD_BYTES = 38 + 28
#: A request that asks for no answer (kind 5) has no inner header.
DGRAM_UNANSWERED_SAVES = 4
#: Largest body of one datagram: 1,232 B (IPv6 minimum MTU minus IPv6/UDP
#: headers) minus the 38 B above (``dgram_wire.MAX_BODY``).
DGRAM_MAX_BODY = 1_194
#: A larger request body goes as up to 4 parts of at most 1,192 bytes each (a
#: 2-byte part header), each one datagram with the overhead above
#: (``dgram_wire.PART_CHUNK``, ``MAX_REQUEST``); replies are one datagram.
DGRAM_PART_CHUNK = 1_192
DGRAM_MAX_REQUEST = 4 * DGRAM_PART_CHUNK

#: Transport models: ``None`` (payload only), "stream", "datagram".
MODELS = ("stream", "datagram")


def model_of(wire_overhead: bool | str | None) -> str | None:
    """The transport model a ``NetParams.wire_overhead`` value means (True: "stream")."""
    if wire_overhead is None or wire_overhead is False or wire_overhead == "":
        return None
    if wire_overhead is True:
        return "stream"
    if wire_overhead not in MODELS:
        raise ValueError(f"unknown wire overhead model {wire_overhead!r} (one of {MODELS})")
    return str(wire_overhead)


def request_bytes(model: str, type_name: str, body: int) -> tuple[int, bool]:
    """Overhead bytes of a request with a body of ``body`` bytes, and whether it is a datagram."""
    if model == "datagram" and type_name in DATAGRAM_REQUESTS and body <= DGRAM_MAX_REQUEST:
        if body <= DGRAM_MAX_BODY:
            return DGRAM_OVERHEAD_BYTES, True
        parts = -(-body // DGRAM_PART_CHUNK)
        return parts * (DGRAM_OVERHEAD_BYTES + 2), True
    return REQUEST_OVERHEAD_BYTES, False


def reply_falls_back(type_name: str, body: int, dgram: bool) -> bool:
    """Whether a reply to a datagram request (``dgram``) sends the call again over the stream."""
    return dgram and not (type_name in DATAGRAM_REPLIES and body <= DGRAM_MAX_BODY)


def reply_bytes(type_name: str, body: int, request_body: int, dgram: bool) -> int:
    """Overhead bytes of a reply (``body`` bytes) to a request of ``request_body`` bytes.

    ``dgram``: the request went as a datagram. A reply a datagram cannot carry
    costs a "use the stream" datagram and the call again over the stream (the
    request's body and both stream overheads).
    """
    if not dgram:
        return REPLY_OVERHEAD_BYTES
    if not reply_falls_back(type_name, body, dgram):
        return DGRAM_OVERHEAD_BYTES
    return DGRAM_OVERHEAD_BYTES + request_body + REQUEST_OVERHEAD_BYTES + REPLY_OVERHEAD_BYTES


# -- connection set-up (daemon/rpc_client.py's pool) ---------------------------------------
#: Measured: bytes of a new gRPC channel beyond its first call's (docs/TRANSPORT.md:
#: TLS handshake, HTTP/2 preface and settings, the first call's headers before
#: HPACK indexed them). A node's first channel to a member also fetches its
#: certificate (1,746 B); not charged: the client keeps 4,096 of them, so a
#: long-running node has them all.
CONNECT_BYTES = 4_921
#: The client's pool: most channels open at once, and the idle close
#: (``rpc_client.MAX_CHANNELS``, ``CHANNEL_IDLE_S``; a test keeps them equal).
MAX_CHANNELS = 64
CHANNEL_IDLE_MS = 60_000


class ChannelPool:
    """One caller's warm stream channels: which calls open a new connection.

    As ``daemon/rpc_client.RpcClient``: at most ``cap`` channels, the least
    recently used closed to make room, and a channel idle for ``idle_ms``
    closed. A callee is named by anything hashable (the simulator uses the
    endpoint and its epoch: a restarted member's old connections are gone).
    """

    __slots__ = ("_cap", "_idle_ms", "_used", "opened")

    def __init__(self, cap: int = MAX_CHANNELS, idle_ms: int = CHANNEL_IDLE_MS) -> None:
        self._cap = cap
        self._idle_ms = idle_ms
        self._used: OrderedDict[Hashable, int] = OrderedDict()
        self.opened = 0

    def __len__(self) -> int:
        return len(self._used)

    def use(self, callee: Hashable, now_ms: int) -> bool:
        """A call to ``callee`` at ``now_ms``: True if it opens a new connection."""
        used = self._used
        last = used.pop(callee, None)
        while used:  # idle ones are at the front (least recently used first)
            first = next(iter(used.values()))
            if now_ms - first < self._idle_ms:
                break
            used.popitem(last=False)
        fresh = last is None or now_ms - last >= self._idle_ms
        used[callee] = now_ms
        if len(used) > self._cap:
            used.popitem(last=False)
        if fresh:
            self.opened += 1
        return fresh
