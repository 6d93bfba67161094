"""The datagram path of node-to-node calls (issue 14): UDP beside the gRPC stream.

Small idempotent calls (``core/wire.DATAGRAM_REQUESTS``, flagged in the
protocol's codec table: a probe, an indirect probe, the steps of a sync session, a
push of at most 4,768 bytes) go as one sealed datagram each way (a request of
more than 1,194 bytes as up to four parts, joined by ``dw.Reassembly``)
(:mod:`smegmesh.daemon.dgram_wire`) to the same host and port number as the
gRPC server; everything else, and any call the datagrams do not answer in
time, goes over the stream. docs/TRANSPORT.md has the measurements,
docs/SECURITY.md the threat model.

* :class:`DatagramServer` (started by ``RpcServer.start`` when it is given
  ``private_key_for``) checks, in this order and all before any X25519 or
  decryption: the length, magic and kind; the receiver id names one of our
  keys; the sender is not the receiver and its id names a member (strangers
  never use datagrams: they get a "use the stream" notice);
  a token bucket per source address; the server's in-flight limits for
  datagram calls (a pool of their own: no stream call keeps a probe out). Then the
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
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from smegmesh.core.wire import DATAGRAM_REPLIES, DATAGRAM_REQUESTS, message_name
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.dgram_old import old_notice_for
from smegmesh.daemon.dgram_replay import ReplayCache
from smegmesh.daemon.member_budget import OVER_CALL_BUDGET
from smegmesh.daemon.rpc_common import CLOCK_SKEW_MS, Refused
from smegmesh.daemon.udp import open_udp

if TYPE_CHECKING:
    from smegmesh.daemon.rpc_server import RpcServer

log = logging.getLogger("smegmesh.daemon.transport")

#: The refusal of a datagram whose sender is no member we know (a node just admitted
#: elsewhere, at every join): counted under this reason, logged at DEBUG only.
NOT_A_MEMBER = "not a member"

#: Token bucket per source address: requests per second, burst, addresses tracked.
BUCKET_RATE = 100.0
BUCKET_BURST = 200.0
MAX_BUCKETS = 4096
#: X25519 derivations for datagrams whose pair of keys is not cached, per
#: second and burst, in all. A datagram naming a member id costs one before its
#: tag can fail; the cache held 8,192 pairs (now 16,384), so naming more
#: members than that (their ids travel in clear) from rotating source
#: addresses (each a new per-address bucket) made every forged datagram one
#: (~140 us). Honest new pairs come at the rate new members call (a join's
#: first probes): past the budget such a datagram is answered with the clear
#: "use the stream" notice (within the address's bucket), and the caller
#: makes that call over the stream at once.
DERIVE_RATE = 200.0
DERIVE_BURST = 2000.0


#: Receive buffer asked for a datagram socket (the kernel's default, 208 KB, holds
#: about 90 datagrams: at 100 real daemons on 2 cores a process not scheduled
#: for a second lost 1,337 of every 2,082 datagrams a second to full buffers,
#: and the lost probes became a prune storm). Memory is used only when queued.
RCVBUF = 4 * 1024 * 1024


def grow_receive_buffer(transport: asyncio.BaseTransport) -> int:
    """Ask for :data:`RCVBUF` on ``transport``'s socket (beyond ``rmem_max`` where
    allowed: ``SO_RCVBUFFORCE`` needs CAP_NET_ADMIN); the size the kernel gave."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
            break
        except OSError:
            continue
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


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


def note_send_error(stats: DatagramStats, exc: Exception) -> None:
    """A datagram the kernel would not take (send buffer full): dropped, counted."""
    if isinstance(exc, BlockingIOError | InterruptedError):
        stats.refused["send buffer full"] += 1


class _Bucket:
    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, now: float, rate: float = BUCKET_RATE, burst: float = BUCKET_BURST) -> None:
        self.tokens = self.burst = burst
        self.rate = rate
        self.at = now

    def take(self, now: float) -> bool:
        """One token if there is one (refilled at ``rate`` a second up to ``burst``)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


#: One of our keys: ``(WireGuard public key, private key)``.
Keys = tuple[bytes, bytes]


DERIVE_LIMITED = "key derivations limited"
AMBIGUOUS = "key id names too many members"
#: Refusals before any crypto that tell the sender to use the stream at once.
_NOTIFIED = frozenset({NOT_A_MEMBER, OVER_CALL_BUDGET, DERIVE_LIMITED, AMBIGUOUS})


def fresh_counter() -> dw.NonceCounter:
    """A nonce counter from a random start (a datagram client's or server's)."""
    return dw.NonceCounter(int.from_bytes(os.urandom(4), "big"))


class DatagramKeys(Protocol):
    """Who a header's key ids name (:func:`smegmesh.daemon.dgram_wire.key_id`)."""

    def ours(self, key_id: bytes) -> list[Keys]:
        """Our keys whose public keys have this id (usually one, or none)."""

    def members(self, key_id: bytes) -> list[bytes]:
        """The full keys of the members (of any of our meshes) with this id
        (usually one; more than ``dw.MAX_ID_CANDIDATES``: none is tried)."""


class KeyIds:
    """:class:`DatagramKeys` over a fixed set of our keys and a member look-up by id."""

    def __init__(
        self, own: Iterable[Keys], members_by_id: Callable[[bytes, int], list[bytes]]
    ) -> None:
        self._own: dict[bytes, list[Keys]] = {}
        for pub, priv in own:
            self._own.setdefault(dw.key_id(pub), []).append((pub, priv))
        self._members_by_id = members_by_id

    def ours(self, key_id: bytes) -> list[Keys]:
        return self._own.get(key_id, [])

    def members(self, key_id: bytes) -> list[bytes]:
        # one more than are tried, to know when an id names too many
        return self._members_by_id(key_id, dw.MAX_ID_CANDIDATES + 1)


class DatagramServer(asyncio.DatagramProtocol):
    """The server side: one UDP socket beside an :class:`RpcServer` (see the module doc)."""

    def __init__(
        self,
        server: RpcServer,
        keys: DatagramKeys,
        stats: DatagramStats | None = None,
    ) -> None:
        self._server = server
        self._ids = keys
        self.stats = stats or DatagramStats()
        self.keys = dw.KeyCache()
        self.counter = fresh_counter()
        self.replays = ReplayCache(CLOCK_SKEW_MS)
        self.reassembly = dw.Reassembly()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._per_address = (BUCKET_RATE, BUCKET_BURST)
        self._derive = _Bucket(time.monotonic(), DERIVE_RATE, DERIVE_BURST)
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def set_derive_budget(self, rate: float, burst: float) -> None:
        """X25519 for pairs not cached: ``rate`` a second, ``burst`` at once (see
        :data:`DERIVE_RATE`; a test swarm hosting thousands of identities needs more)."""
        self._derive = _Bucket(time.monotonic(), rate, burst)

    def set_address_budget(self, rate: float, burst: float) -> None:
        """Datagrams from one address: ``rate`` a second, ``burst`` at once (see
        :data:`BUCKET_RATE`; a test swarm sends every member's from one address).

        Buckets made before keep their budget: set it before any traffic.
        """
        self._per_address = (rate, burst)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        note_send_error(self.stats, exc)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for t in self._tasks:
            t.cancel()

    def _refuse(self, ip: str, reason: str, size: int = 0) -> None:
        self.stats.refused[reason] += 1
        if size:  # what was dropped still came in over the wire
            self.stats.bytes["in", "refused"] += _wire_len(size, ip)
        if reason == NOT_A_MEMBER:
            # every join: the joiner's first datagram outruns its record (it is
            # told to use the stream); counted, logged at DEBUG, not as an attack
            log.debug("datagram from %s: %s (told to use the stream)", ip, reason)
            return
        self._server.refusals.note(ip, f"datagram: {reason}")

    def _allow(self, ip: str) -> bool:
        now = time.monotonic()
        b = self._buckets.get(ip)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.popitem(last=False)
            b = self._buckets[ip] = _Bucket(now, *self._per_address)
        else:
            self._buckets.move_to_end(ip)
        return b.take(now)

    def _notify(self, note: bytes, ip: str, addr: Any) -> None:
        """Send a "use the stream" notice (within the address's token bucket)."""
        if self._allow(ip) and self._transport is not None:
            self._transport.sendto(note, addr)
            self.stats.count("out", "notice", len(note), ip)

    def _admit(
        self, data: bytes, ip: str, addr: Any
    ) -> tuple[dw.Header, list[dw.Candidate]] | None:
        """The checks before any crypto: the header and the ``(sender's key, our
        key, our private key)`` its ids may name that passed them (usually one),
        or None (refused)."""
        try:
            h = dw.parse_header(data, _wall_ms())
        except dw.DatagramError as e:
            old = old_notice_for(data)
            if old is not None:  # a node not upgraded yet: use the stream with us
                self._notify(old, ip, addr)
            self._refuse(ip, "older version" if old is not None else str(e), len(data))
            return None
        if h.kind not in (dw.REQUEST, dw.REQUEST_PART, dw.UNANSWERED):
            self._refuse(ip, "not a request", len(data))
            return None
        ours = self._ids.ours(h.receiver_id)[: dw.MAX_ID_CANDIDATES]
        senders = self._ids.members(h.sender_id) if ours else []
        pairs: list[dw.Candidate] = []
        if not ours:
            reason = "not for us"
        elif not senders:
            reason = NOT_A_MEMBER  # strangers never use datagrams
        elif len(senders) > dw.MAX_ID_CANDIDATES:
            reason = AMBIGUOUS  # members made to share it: this call over the stream
        elif not self._allow(ip):
            reason = "rate limited"
        else:
            # Each member the id may name within its own limits: one that made
            # its key to share another's id spends its own, not the other's.
            reason, pairs = self._within_limits(senders, ours)
        if pairs:
            return h, pairs
        # A node just admitted elsewhere (not a member here yet), one past its
        # call budget (a lookup and a 10-byte notice, not an opening and a
        # sealed refusal; over the stream its call is held 0.5 s in one of its
        # slots, then refused), a pair with no key derivation left: this call
        # over the stream. Nobody waits for an unanswered request: no notice.
        if reason in _NOTIFIED and h.kind != dw.UNANSWERED:
            self._notify(dw.notice(h.nonce), ip, addr)
        self._refuse(ip, reason, len(data))
        return None

    def _within_limits(
        self, senders: list[bytes], ours: list[Keys]
    ) -> tuple[str, list[dw.Candidate]]:
        """The pairs of a sender and our keys within the limits, and why the
        others were refused (one that tells the sender to use the stream first)."""
        reasons, pairs = list[str](), list[dw.Candidate]()
        now = time.monotonic()
        for sender in senders:
            if not self._server.datagram_calls.room(sender):
                reasons.append("too many calls")
                continue
            if self._server.budget.out_of_calls(sender):
                reasons.append(OVER_CALL_BUDGET)
                continue
            for mine, priv in ours:
                if sender == mine:
                    reasons.append("sender is the receiver")
                elif len(pairs) < dw.MAX_ID_CANDIDATES and (
                    self.keys.has(priv, sender, mine) or self._derive.take(now)
                ):
                    pairs.append((sender, mine, priv))
                else:
                    reasons.append(DERIVE_LIMITED)
        notified = [r for r in reasons if r in _NOTIFIED]
        return (notified or reasons or [""])[0], pairs

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = _ip(addr)
        admitted = self._admit(data, ip, addr)
        if admitted is None:
            return
        h, pairs = admitted
        try:
            o, (sender, mine, priv) = dw.open_any(self.keys, data, h, pairs)
            self.replays.check(sender, h.nonce, o.ts_ms, _wall_ms())
        except dw.DatagramError as e:
            self._refuse(ip, str(e), len(data))
            return
        if h.kind == dw.REQUEST_PART:
            try:
                whole = self.reassembly.add(
                    sender, o.request_id, o.body, int(time.monotonic() * 1000)
                )
            except dw.DatagramError as e:
                self._refuse(ip, str(e), len(data))
                return
            self.stats.count("in", "part", len(data), ip)
            if whole is None:
                return  # more parts to come
            o = replace(o, body=whole)
            kind = message_name(whole) or "malformed"
        else:
            kind = message_name(o.body) or "malformed"
            self.stats.count("in", kind, len(data), ip)
        answered = h.kind != dw.UNANSWERED
        if kind not in (DATAGRAM_REQUESTS if answered else dw.UNANSWERED_REQUESTS):
            if answered:
                self._reply(o, priv, addr, ip, dw.USE_STREAM, b"")
            else:
                self._refuse(ip, "may not go unanswered", len(data))
            return
        over = self._server.budget.charge(sender, len(o.body))
        if over is not None:
            self._refuse(ip, over)
            if answered:
                self._reply(o, priv, addr, ip, dw.REFUSED, b"")
            return
        self._server.datagram_calls.enter(sender)
        self._server.transport_calls["in", kind, "datagram" if answered else "unanswered"] += 1
        ctx = contextvars.copy_context()
        ctx.run(self._server._set_context, ip, mine)
        task = asyncio.get_running_loop().create_task(
            self._handle(o, priv, addr, ip, answered), context=ctx
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(
        self, o: dw.Opened, priv: bytes, addr: Any, ip: str, answered: bool = True
    ) -> None:
        sender = o.sender
        try:
            reply = await self._server._handler(sender, o.body)
        except Refused as e:
            self._refuse(ip, str(e) or "refused")
            if answered:
                self._reply(o, priv, addr, ip, dw.REFUSED, b"")
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error handling a datagram from %s", ip)
            if answered:
                self._reply(o, priv, addr, ip, dw.REFUSED, b"")
            return
        finally:
            self._server.datagram_calls.leave(sender)
        if not answered:
            return  # it asked for none (a push along the tree)
        if len(reply) > dw.MAX_BODY or message_name(reply) not in DATAGRAM_REPLIES:
            self._reply(o, priv, addr, ip, dw.USE_STREAM, b"")
        else:
            self._reply(o, priv, addr, ip, dw.OK, reply)

    def _reply(
        self, o: dw.Opened, priv: bytes, addr: Any, ip: str, status: int, body: bytes
    ) -> None:
        data = dw.seal(
            self.keys,
            dw.REPLY,
            priv,
            o.receiver,
            o.sender,
            o.request_id,
            _wall_ms(),
            status,
            body,
            self.counter,
        )
        self.stats.count("out", message_name(body) or "status", len(data), ip)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)


async def start_datagram_server(
    server: RpcServer,
    host: str,
    port: int,
    keys: DatagramKeys,
    stats: DatagramStats | None = None,
    quiet: bool = False,
) -> DatagramServer | None:
    """Bind UDP ``host:port`` beside the gRPC server; None (and one warning,
    unless ``quiet``: the caller will try another port) if it cannot."""
    proto = DatagramServer(server, keys, stats)
    try:
        transport, _ = await open_udp(lambda: proto, (host or "::", port))
    except OSError as e:
        (log.debug if quiet else log.warning)(
            "cannot bind UDP %s port %d for datagrams (%s): node-to-node calls use the gRPC "
            "stream only",
            host,
            port,
            e.strerror or e,
        )
        return None
    got = grow_receive_buffer(transport)
    if got < RCVBUF:
        log.info(
            "datagram receive buffer is %d KB (asked %d KB; raise net.core.rmem_max)",
            got // 1024,
            RCVBUF // 1024,
        )
    return proto
