"""The client side of the datagram path (:mod:`smegmesh.daemon.rpc_dgram` has the
design): send a sealed request, resend once, fall back to the stream or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smegmesh.core.endpoint import split_host_port
from smegmesh.core.wire import DATAGRAM_REQUESTS, message_name
from smegmesh.daemon import dgram_wire as dw
from smegmesh.daemon.engineport import answer_shows_caller_known
from smegmesh.daemon.rpc_backoff import EndpointBackoff
from smegmesh.daemon.rpc_common import CLOCK_SKEW_MS, RpcError
from smegmesh.daemon.rpc_dgram import (
    DatagramStats,
    _ip,
    _wall_ms,
    fresh_counter,
    grow_receive_buffer,
    note_send_error,
)
from smegmesh.daemon.udp import open_udp

if TYPE_CHECKING:
    from smegmesh.core.identity import NodeIdentity

log = logging.getLogger("smegmesh.daemon.transport")

#: Resend after this share of the call's timeout, fall back to the stream after that.
RESEND_AT = 0.4
FALLBACK_AT = 0.7
MISSES_FOR_STREAM_ONLY = 3
STREAM_ONLY_S = 600.0
MAX_STREAM_ONLY = 4096
MAX_PENDING = 1024
#: An endpoint that answered a datagram this recently speaks datagrams: a call
#: it does not answer by :data:`FALLBACK_AT` of the timeout has failed (no
#: stream fallback, which would open a TLS connection to a node that is already
#: slow to answer). Failing there, not at the full timeout, keeps a dead node
#: found as soon as before (then the fallback's connection was refused at once).
ANSWERED_TTL_S = 60.0
#: A call left with less than this when its datagrams went unanswered fails
#: there: a TLS connection (a relayed probe has 0.12 s left) would not be made
#: in time on a busy node, and both ends would pay for the handshake. Calls
#: with the RPC timeout (5 s) still fall back, and so learn stream-only endpoints.
MIN_STREAM_FALLBACK_S = 0.25
#: The status a notice stands for (not on the wire: notices are not sealed).
_UNKNOWN_SENDER = 256


@dataclass
class _Pending:
    future: asyncio.Future[tuple[int, bytes]]
    me: bytes  # our WireGuard key (the reply's receiver)
    to: bytes  # theirs (the reply's sender)


class DatagramClient(asyncio.DatagramProtocol):
    """The client side: one unconnected UDP socket per address family (lazily opened).

    May be shared by several ``RpcClient`` (a swarm's members); each call names
    the identity it speaks for.
    """

    def __init__(self, stats: DatagramStats | None = None) -> None:
        self.stats = stats or DatagramStats()
        self.keys = dw.KeyCache()
        self._pending: dict[int, _Pending] = {}
        #: (our key id, theirs) -> {(our key, theirs): [our private key, our key,
        #: theirs, calls pending]}: a reply names both ends by id; these are the
        #: keys that may open it (two pairs share ids by chance in a swarm process)
        self._pairs: dict[tuple[bytes, bytes], dict[tuple[bytes, bytes], list[Any]]] = {}
        self.counter = fresh_counter()
        self._sockets: dict[int, asyncio.DatagramTransport] = {}
        self._opening: dict[int, asyncio.Lock] = {}
        self._misses: OrderedDict[str, int] = OrderedDict()
        self._stream_only: OrderedDict[str, float] = OrderedDict()
        self._answered: OrderedDict[str, float] = OrderedDict()  # endpoint -> last answer
        #: nonce of a request in flight -> (its id, the (ip, port) it went to)
        self._by_nonce: dict[bytes, tuple[int, tuple[str, int]]] = {}
        #: (endpoint, callee key) whose datagrams went unanswered (not known to
        #: speak them) on a call with no time left for the stream: its calls go
        #: over the stream for 1, 2, 4 ... s (up to 5 min).
        #: A record may name any address (a third party's), and every node
        #: relays pings to it on request: before this, ~80 datagrams a second
        #: from each node, never backed off. Per callee key: a record naming
        #: another node's address backs off only itself.
        self.silent = EndpointBackoff()

    # -- which calls ---------------------------------------------------------------
    def target(self, endpoint: str, to: bytes, body: bytes) -> tuple[str, int, int] | None:
        """``(ip, port, family)`` if this call to ``to`` goes by datagram, else None."""
        if len(body) > dw.MAX_REQUEST or len(self._pending) >= MAX_PENDING:
            return None
        if self.silent.wait((endpoint, to)) > 0:
            return None
        if message_name(body) not in DATAGRAM_REQUESTS:
            return None
        until = self._stream_only.get(endpoint)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._stream_only[endpoint]
        try:
            host, port = split_host_port(endpoint)
            a = ipaddress.ip_address(host)
        except ValueError:
            return None  # a name: the stream resolves it
        fam = 10 if a.version == 6 else 2  # AF_INET6, AF_INET
        return str(a), port, fam

    def _missed(self, endpoint: str) -> None:
        if endpoint in self._stream_only:
            return  # a call that was in flight when it was learnt
        n = self._misses.pop(endpoint, 0) + 1
        if n >= MISSES_FOR_STREAM_ONLY:
            if len(self._stream_only) >= MAX_STREAM_ONLY:
                self._stream_only.popitem(last=False)
            self._stream_only[endpoint] = time.monotonic() + STREAM_ONLY_S
            log.info("%s does not answer datagrams: stream only for %d s", endpoint, STREAM_ONLY_S)
            return
        if len(self._misses) >= MAX_STREAM_ONLY:
            self._misses.popitem(last=False)
        self._misses[endpoint] = n

    # -- the call --------------------------------------------------------------------
    def _speaks_datagrams(self, endpoint: str) -> bool:
        at = self._answered.get(endpoint)
        return at is not None and time.monotonic() - at < ANSWERED_TTL_S

    def _answered_now(self, endpoint: str) -> None:
        self._misses.pop(endpoint, None)
        self._answered[endpoint] = time.monotonic()
        self._answered.move_to_end(endpoint)
        if len(self._answered) > MAX_STREAM_ONLY:
            self._answered.popitem(last=False)

    async def call(
        self,
        target: tuple[str, int, int],
        endpoint: str,
        to: bytes,
        body: bytes,
        timeout: float,
        me: NodeIdentity,
        stream: Callable[[float], Awaitable[bytes]],
    ) -> bytes:
        """One call by datagram, falling back to ``stream(remaining timeout)``.

        An endpoint that answered a datagram within :data:`ANSWERED_TTL_S` gets
        no fallback: its silence until :data:`FALLBACK_AT` is a failed call.
        """
        t0 = time.monotonic()
        try:
            sock = await self._socket(target[2])
            self.keys.aead(me.wg_private_key, to, me.wg_public_key, to)  # a bad key: stream
        except (OSError, dw.DatagramError) as e:
            self.stats.fallbacks[f"no datagram ({type(e).__name__})"] += 1
            return await stream(timeout)
        known = self._speaks_datagrams(endpoint)
        kind = message_name(body) or "unknown"
        status, reply = await self._exchange(sock, target, to, body, timeout, me, kind)
        remaining = max(0.001, t0 + timeout - time.monotonic())
        if status is None:
            if known and len(body) <= dw.MAX_BODY:
                # (A request in parts may meet a node that takes only single
                # datagrams: it falls back below, like one to a new endpoint.)
                # A live node that missed one (busy) is not backed off.
                self.stats.fallbacks["unanswered (speaks datagrams)"] += 1
                raise RpcError(f"{endpoint}: no answer by datagram in {timeout:g} s")
            if remaining < MIN_STREAM_FALLBACK_S:
                # backed off: no datagrams at this address for a while (the
                # stream, when there is time for it, has a back-off of its own)
                self.silent.failed((endpoint, to))
                self.stats.fallbacks["unanswered (no time for the stream)"] += 1
                raise RpcError(f"{endpoint}: no answer by datagram in {timeout:g} s")
            self.stats.fallbacks["unanswered"] += 1
            reply = await stream(remaining)  # a failure (RpcError) teaches nothing
            # The stream answered where datagrams did not. A member that has not
            # heard of us yet (an older one: newer ones send a notice) drops our
            # datagrams and refuses the call on the stream, except a Push of our
            # own record (how a node just admitted announces itself): neither teaches.
            if answer_shows_caller_known(kind, message_name(reply)):
                self._missed(endpoint)
            return reply
        if status == _UNKNOWN_SENDER:
            self.stats.fallbacks["unknown to them"] += 1
            return await stream(remaining)
        self._answered_now(endpoint)
        self.silent.ok((endpoint, to))
        if status == dw.USE_STREAM:
            self.stats.fallbacks["use the stream"] += 1
            return await stream(remaining)
        if status != dw.OK:
            raise RpcError(f"{endpoint}: refused (datagram)")
        self.stats.fallbacks["answered"] += 1
        return reply

    async def send_unanswered(
        self, endpoint: str, to: bytes, body: bytes, me: NodeIdentity
    ) -> bool:
        """Send ``body`` as one datagram that asks for no answer; False if it cannot go so.

        Only to an endpoint that answered a datagram within :data:`ANSWERED_TTL_S`
        (one that does not speak them would drop it unseen) and is not backed
        off, and only a body of one datagram of a type that may go unanswered
        (``dw.UNANSWERED_REQUESTS``): the caller makes an ordinary call instead.
        """
        if len(body) > dw.MAX_BODY or message_name(body) not in dw.UNANSWERED_REQUESTS:
            return False
        target = self.target(endpoint, to, body)
        if target is None or not self._speaks_datagrams(endpoint):
            return False
        try:
            sock = await self._socket(target[2])
            data = dw.seal(
                self.keys,
                dw.UNANSWERED,
                me.wg_private_key,
                me.wg_public_key,
                to,
                0,
                _wall_ms(),
                0,
                body,
                self.counter,
            )
        except (OSError, dw.DatagramError):
            return False
        self.stats.count("out", message_name(body) or "unknown", len(data), target[0])
        try:
            sock.sendto(data, target[:2])
        except OSError as e:
            note_send_error(self.stats, e)
            return False
        self.stats.fallbacks["sent unanswered"] += 1  # how the datagram calls ended
        return True

    async def probe(
        self, ip: str, port: int, to: bytes, body: bytes, timeout: float, me: NodeIdentity
    ) -> bytes | None:
        """One datagram call to ``ip``:``port`` (an IP literal), nothing learnt and no
        fallback: the reply body, or None (unanswered, refused, or not sent).

        A client's probe through its peer (``core.forwardwatch``): the same
        member by its overlay address and by its control endpoint, so neither
        may take the stream, nor be skipped for a back-off the other earned.
        """
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if len(self._pending) >= MAX_PENDING or len(body) > dw.MAX_BODY:
            return None
        fam = 10 if a.version == 6 else 2
        try:
            sock = await self._socket(fam)
            self.keys.aead(me.wg_private_key, to, me.wg_public_key, to)
        except (OSError, dw.DatagramError):
            return None
        kind = message_name(body) or "unknown"
        status, reply = await self._exchange(sock, (str(a), port, fam), to, body, timeout, me, kind)
        return reply if status == dw.OK else None

    async def _exchange(
        self,
        sock: asyncio.DatagramTransport,
        target: tuple[str, int, int],
        to: bytes,
        body: bytes,
        timeout: float,
        me: NodeIdentity,
        kind: str,
    ) -> tuple[int | None, bytes]:
        """Send (and resend once); ``(status, body)`` of the answer, ``(None, b"")`` if none."""
        t0 = time.monotonic()
        rid = int.from_bytes(os.urandom(4), "big")
        while rid in self._pending:
            rid = int.from_bytes(os.urandom(4), "big")
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        mine = me.wg_public_key
        self._pending[rid] = _Pending(fut, mine, to)
        pair = (dw.key_id(mine), dw.key_id(to))
        slots = self._pairs.setdefault(pair, {})
        slot = slots.setdefault((mine, to), [me.wg_private_key, mine, to, 0])
        slot[3] += 1
        nonces: list[bytes] = []
        if len(body) > dw.MAX_BODY:
            dg_kind, bodies = dw.REQUEST_PART, dw.split_request(body)
        else:
            dg_kind, bodies = dw.REQUEST, [body]
        try:
            for share in (RESEND_AT, FALLBACK_AT):
                for part in bodies:
                    data = dw.seal(
                        self.keys,
                        dg_kind,
                        slot[0],
                        mine,
                        to,
                        rid,
                        _wall_ms(),
                        0,
                        part,
                        self.counter,
                    )
                    nonces.append(dw.request_nonce(data))
                    self._by_nonce[nonces[-1]] = (rid, (_ip(target), target[1]))
                    self.stats.count("out", kind, len(data), target[0])
                    sock.sendto(data, target[:2])
                left = t0 + timeout * share - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), max(0.0, left))
                if fut.done():
                    break
        finally:
            del self._pending[rid]
            for n in nonces:
                self._by_nonce.pop(n, None)
            slot[3] -= 1
            if not slot[3]:
                del slots[(mine, to)]
                if not slots:
                    del self._pairs[pair]
        if not fut.done():
            fut.cancel()
            return None, b""
        return fut.result()

    async def _socket(self, family: int) -> asyncio.DatagramTransport:
        s = self._sockets.get(family)
        if s is not None:
            return s
        lock = self._opening.setdefault(family, asyncio.Lock())
        async with lock:
            s = self._sockets.get(family)
            if s is None:
                s, _ = await open_udp(lambda: self, ("::" if family == 10 else "0.0.0.0", 0))
                grow_receive_buffer(s)
                self._sockets[family] = s
        return s

    def datagram_received(self, data: bytes, addr: Any) -> None:
        ip = _ip(addr)
        nonce = dw.parse_notice(data)
        if nonce is not None:
            # "unknown sender": matched by our request's nonce and the address
            # it went to (the nonce's counter is guessable by a member that got
            # one of our requests: from elsewhere, a notice is not taken)
            rid, to = self._by_nonce.get(nonce, (-1, ("", 0)))
            p = self._pending.get(rid)
            if p is None or p.future.done() or (ip, addr[1]) != to:
                self.stats.refused["not awaited"] += 1
            else:
                self.stats.count("in", "notice", len(data), ip)
                p.future.set_result((_UNKNOWN_SENDER, b""))
            return
        try:
            h = dw.parse_header(data, _wall_ms())
        except dw.DatagramError as e:
            self.stats.refused[str(e)] += 1
            return
        slots = self._pairs.get((h.receiver_id, h.sender_id))
        if h.kind != dw.REPLY or slots is None:
            self.stats.refused["not awaited"] += 1  # no crypto for what we did not ask
            return
        try:
            o, _ = dw.open_any(self.keys, data, h, [(s[2], s[1], s[0]) for s in slots.values()])
        except dw.DatagramError as e:
            self.stats.refused[str(e)] += 1
            return
        p = self._pending.get(o.request_id)
        if p is None or p.to != o.sender or p.me != o.receiver or p.future.done():
            self.stats.refused["not awaited"] += 1
            return
        if abs(_wall_ms() - o.ts_ms) > CLOCK_SKEW_MS:
            self.stats.refused["outside the clock window"] += 1
            return
        self.stats.count("in", message_name(o.body) or "status", len(data), ip)
        p.future.set_result((o.status, o.body))

    def error_received(self, exc: Exception) -> None:
        # ICMP errors of an unconnected socket: the call times out and falls back;
        # a full send buffer: the datagram was dropped (counted), the resend covers it
        note_send_error(self.stats, exc)

    def close(self) -> None:
        for s in self._sockets.values():
            s.close()
        self._sockets.clear()
